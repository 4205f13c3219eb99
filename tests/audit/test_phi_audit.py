"""PHI audit (tasks/curation/audit/phi_audit.py) on a real curated output: clean output passes, and a leak
planted in each kind of place is found there. Identifiers come from the restricted zone only."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from mrifoundry.tasks.curation.audit.identifiers import Identifiers, collect_identifiers, tokens
from mrifoundry.tasks.curation.audit.phi_audit import Hit, PhiLeakError, audit
from tests.flows.helpers import copy_exams


# --------------------------------------------------------------------------- matcher units
def _ids() -> Identifiers:
    ids = Identifiers()
    ids.add("DOE^JOHN^Q", "name")
    ids.add("123456", "mrn")
    ids.add("19580317", "birth date")
    ids.add("1.2.840.99.1", "uid")
    ids.add("919-555-1023", "phone")
    ids.add("WHITE", "physician")   # one-word names are not distinctive: dropped
    ids.add("4321", "accession")    # short numbers occur by chance: dropped
    return ids


@pytest.mark.parametrize("text, kinds", [
    ("Patient: Doe, John Q", {"name"}), ("john doe", {"name"}), ("JOHN Q DOE", {"name"}), ("DOE^JOHN", {"name"}),
    ("dob 1958-03-17", {"birth date"}), ("03/17/1958", {"birth date"}), ("3/17/1958", {"birth date"}),
    ("MRN: 123456.", {"mrn"}), ("tel (919) 555-1023", {"phone"}), ("9195551023", {"phone"}),
    ("ref 1.2.840.99.1", {"uid"}),
    ("2.25.99123456789", set()), ("uid 1.2.840.99.1.5", set()), ("1.2.840.99", set()), ("MRN1234567", set()),
    ("white matter 4321", set()), ("john smith", set()), ("", set()),
])
def test_whole_token_matching(text, kinds):
    assert _ids().find(text) == kinds
    assert _ids().find(text.encode()) == kinds


def test_uids_are_kept_as_hashes_through_merge_and_pickle():
    """One UID per source file (≈ 7 M at Duke size): 8 bytes each, found as whole tokens only."""
    import pickle
    uids = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(1000)]
    a, b = Identifiers(), Identifiers()
    for u in uids[:600]:
        a.add(u, "uid")
    for u in uids[500:]:
        b.add(u, "uid")
    a.merge(b)
    assert a.kinds() == {"uid": 1000} and len(a) == 1000 and not a.phrases
    assert a._uid_set().nbytes == 8 * 1000
    for ids in (a, pickle.loads(pickle.dumps(a))):
        assert ids.find(f"ref {uids[0]}, {uids[999]}") == {"uid"}
        assert ids.find(b"seen " + uids[640].encode()) == {"uid"}
        assert ids.find("1.2.826.0.1.3680043.8.498.1000 and 1.2.826.0.1.3680043.8.498") == set()
        assert ids.find(uids[7] + ".1") == set()


def test_tokens_keep_uids_whole():
    assert tokens("A 1.2.3.4, b") == [b"a", b"1.2.3.4", b"b"]


# --------------------------------------------------------------------------- curated output

@pytest.fixture(scope="module")
def curated(prefect_server, sample, manifest, tmp_path_factory):
    from mrifoundry.flows.curate import curate
    archive = tmp_path_factory.mktemp("audit-archive")
    out = tmp_path_factory.mktemp("audit-out")
    clean = [e for e in manifest["exams"] if e.get("in_archive") and e.get("study_dir")
             and not any(s.get("defect") for s in e["series"])][:2]
    copy_exams(manifest, sample, archive, lambda e: e in clean)
    state = curate(archive=str(archive), reports=None, out=str(out), return_state=True)
    assert state.is_completed(), state.message
    return out


@pytest.fixture(scope="module")
def ids(curated, sample):
    return collect_identifiers(curated, sample / "reports.csv")


@pytest.fixture(scope="module")
def source(curated) -> pydicom.Dataset:
    """A raw source header of the curated output (restricted zone)."""
    got = json.loads(next((curated / "restricted" / "staging").glob("*/retrieve.json")).read_text())
    return pydicom.dcmread(got["files"][0], stop_before_pixels=True)


@pytest.fixture
def copy_out(curated, tmp_path) -> Path:
    """A private copy of the research zone and state to plant leaks in."""
    out = tmp_path / "out"
    for zone in ("research", "state"):
        shutil.copytree(curated / zone, out / zone)
    return out


def _prefect_db() -> Path:
    return Path(os.environ["PREFECT_HOME"]) / "prefect.db"


def _log_dir() -> Path:
    return Path(os.environ["MRIFOUNDRY_HOME"]) / "logs"


@pytest.mark.slow
@pytest.mark.prefect_server
def test_identifiers_come_from_the_restricted_zone(ids, source):
    kinds = ids.kinds()
    for kind in ("name", "mrn", "accession", "birth date", "address", "institution", "physician", "uid",
                 "device", "report text"):
        assert kinds[kind] > 0, kind
    assert ids.find(str(source.PatientName)) == {"name"}
    assert ids.find(str(source.SOPInstanceUID)) == {"uid"}


@pytest.mark.slow
@pytest.mark.prefect_server
def test_curated_output_is_clean(curated, ids):
    rep = audit(curated, ids, prefect_db=_prefect_db(), log_dirs=[_log_dir()])
    assert rep.ok, rep.to_markdown()
    for kind in ("dicom", "png", "nifti", "parquet", "json", "sqlite"):
        assert rep.scanned[kind] > 0, kind
    assert "**PASS**" in rep.to_markdown()


def _hits(out: Path, ids: Identifiers, **kw) -> set[Hit]:
    rep = audit(out, ids, **kw)
    text = rep.to_markdown()
    assert not rep.ok and rep.errors == []
    with pytest.raises(PhiLeakError):
        rep.raise_if_leaks()
    return set(rep.hits), text


def _first(out: Path, pattern: str) -> Path:
    return sorted((out / "research").rglob(pattern))[0]


@pytest.mark.slow
@pytest.mark.prefect_server
def test_name_in_nested_sequence_of_research_dicom(copy_out, ids, source):
    path = _first(copy_out, "*.dcm")
    ds = pydicom.dcmread(path)
    inner = pydicom.Dataset()
    inner.PatientName = source.PatientName
    outer = pydicom.Dataset()
    outer.ReferencedPatientSequence = [inner]
    ds.ReferencedStudySequence = [outer]
    ds.save_as(path)
    hits, text = _hits(copy_out, ids)
    place = str(path.relative_to(copy_out))
    assert hits == {Hit(place, "(0008,1110)[0].(0008,1120)[0].(0010,0010)", "name")}
    assert str(source.PatientName) not in text and str(source.PatientName.family_name) not in text


@pytest.mark.slow
@pytest.mark.prefect_server
def test_mrn_in_private_tag(copy_out, ids, source):
    path = _first(copy_out, "*.dcm")
    ds = pydicom.dcmread(path)
    ds.private_block(0x0029, "ACME 1.0", create=True).add_new(0x20, "LO", str(source.PatientID))
    ds.save_as(path)
    hits, _ = _hits(copy_out, ids)
    assert hits == {Hit(str(path.relative_to(copy_out)), "(0029,1020)", "mrn")}


@pytest.mark.slow
@pytest.mark.prefect_server
def test_nifti_descrip_and_extension(copy_out, ids, source):
    path = _first(copy_out, "*.nii.gz")
    img = nib.load(path)
    img = nib.Nifti1Image(img.get_fdata(dtype="float32"), img.affine, img.header)
    img.header["descrip"] = f"acc {source.AccessionNumber}".encode()
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, f"born {source.PatientBirthDate}".encode()))
    nib.save(img, path)
    hits, _ = _hits(copy_out, ids)
    place = str(path.relative_to(copy_out))
    assert hits == {Hit(place, "header descrip", "accession"), Hit(place, "extension 0 (ecode 6)", "birth date")}


@pytest.mark.slow
@pytest.mark.prefect_server
def test_png_text_chunks(copy_out, ids, source):
    path = _first(copy_out, "*.png")
    bd = str(source.PatientBirthDate)
    info = PngInfo()
    info.add_text("Comment", f"DOB {bd[4:6]}/{bd[6:]}/{bd[:4]}")                     # US date format
    pn = source.PatientName
    info.add_text("Author", f"{pn.given_name} {pn.family_name}", zip=True)          # zTXt, given name first
    Image.open(path).save(path, pnginfo=info)
    hits, _ = _hits(copy_out, ids)
    place = str(path.relative_to(copy_out))
    assert hits == {Hit(place, "tEXt chunk 1", "birth date"), Hit(place, "zTXt chunk 1", "name")}


@pytest.mark.slow
@pytest.mark.prefect_server
def test_catalog_parquet_column(copy_out, ids, source):
    path = copy_out / "research" / "catalog" / "series" / "series.parquet"
    table = pq.read_table(path)
    col = table.column_names.index("series_description")
    values = table.column(col).to_pylist()
    values[0] = f"AX T1 {source.AccessionNumber}"
    pq.write_table(table.set_column(col, "series_description", [values]), path)
    hits, _ = _hits(copy_out, ids)
    assert hits == {Hit("research/catalog/series/series.parquet", "column series_description", "accession")}


@pytest.mark.slow
@pytest.mark.prefect_server
def test_npy_header_and_integer_data(copy_out, ids, source):
    cache = copy_out / "research" / "cache" / "volumes"
    cache.mkdir(parents=True)
    mrn = str(source.PatientID)
    np.save(cache / "fields.npy", np.zeros(2, dtype=[(f"id {mrn}", "<f4")]))        # a field name in the header
    np.save(cache / "text.npy", np.frombuffer(f"x {source.AccessionNumber} y".encode(), dtype=np.uint8))
    hits, _ = _hits(copy_out, ids)
    assert hits == {Hit("research/cache/volumes/fields.npy", "npy header", "mrn"),
                    Hit("research/cache/volumes/text.npy", "raw bytes", "accession")}


@pytest.mark.slow
@pytest.mark.prefect_server
def test_float_npy_data_is_numbers_not_text(copy_out, ids, source):
    """A float16 volume whose bytes happen to spell an identifier is not a hit (chance runs of
    ASCII in float data were the audit's false positives); its header is still read."""
    cache = copy_out / "research" / "cache" / "volumes"
    cache.mkdir(parents=True)
    spelled = f" {source.PatientID} ".encode()
    np.save(cache / "volume.npy", np.frombuffer(spelled + b"\0" * (len(spelled) % 2), dtype=np.float16))
    rep = audit(copy_out, ids)
    assert rep.ok, rep.to_markdown()
    assert rep.scanned["npy"] == 1
    assert ids.find(spelled)                                   # the same bytes as raw data would hit


@pytest.mark.slow
@pytest.mark.prefect_server
def test_log_file_line(copy_out, ids, source, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    pn = source.PatientName
    (logs / "curate.log").write_text(f"INFO start\nWARNING retrying {pn.family_name}, {pn.given_name}\n")
    hits, _ = _hits(copy_out, ids, log_dirs=[logs])
    assert hits == {Hit(str(logs / "curate.log"), "line 2", "name")}


@pytest.mark.slow
@pytest.mark.prefect_server
def test_prefect_flow_run_parameter_and_log(copy_out, ids, source):
    from prefect import flow, get_run_logger
    from prefect.logging.handlers import APILogWorker

    @flow(name="leaky-audit-test")
    def leaky(accession: str) -> None:
        get_run_logger().info("fetching accession %s", accession)

    state = leaky(str(source.AccessionNumber), return_state=True)
    APILogWorker.drain_all(timeout=15)
    run_id = str(state.state_details.flow_run_id)
    try:
        hits, _ = _hits(copy_out, ids, prefect_db=_prefect_db())
        db = str(_prefect_db())
        assert Hit(db, f"table flow_run column parameters id={run_id}", "accession") in hits
        assert any(h.place == db and h.location.startswith("table log column message") for h in hits)
        assert all(h.place == db for h in hits)
    finally:
        _remove_planted_run(run_id)
    rep = audit(copy_out, ids, prefect_db=_prefect_db())
    assert rep.ok and not rep.hits, "the planted run was not removed from the shared Prefect database"


def _remove_planted_run(run_id: str) -> None:
    """The session's Prefect database is shared: every later curate run audits it, so the
    planted leak must go (flow run via the API; its logs, which Prefect's vacuum service
    would only delete later, directly)."""
    import sqlite3
    import uuid
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        client.delete_flow_run(uuid.UUID(run_id))
    con = sqlite3.connect(_prefect_db(), timeout=60)
    try:
        con.execute("DELETE FROM log WHERE flow_run_id = ? OR flow_run_id = ?", (run_id, run_id.replace("-", "")))
        con.commit()
    finally:
        con.close()


def test_placeholder_values_are_not_identifiers():
    """An accession number 'NONE' must not flag every ImageType ...\\NONE in the research zone."""
    from mrifoundry.tasks.curation.audit.identifiers import Identifiers
    ids = Identifiers()
    ids.add("NONE", "accession")
    ids.add("UNKNOWN", "name")
    ids.add("A20190001", "accession")
    assert ids.find(b"ORIGINAL\\PRIMARY\\M\\NONE unknown") == set()
    assert ids.find(b"acc A20190001") == {"accession"}


def test_no_phrase_across_two_rows_of_a_column(tmp_path):
    """Seen on nibabel's files: study dates '…2010-01-01' then '1900-07-07' in one column read as
    the birth date 01/01/1900. Rows are separate; a value inside one row is still found."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mrifoundry.tasks.curation.audit.identifiers import Identifiers
    from mrifoundry.tasks.curation.audit.scanners import scanner
    ids = Identifiers()
    ids.add("19000101", "birth date")
    path = tmp_path / "exams.parquet"
    pq.write_table(pa.table({"study_date": ["2010-01-01", "1900-07-07"], "note": ["x", "born 01/01/1900"]}), path)
    _, scan = scanner(path)
    found = {loc: ids.find(data) for loc, data in scan(path, ids)}
    assert found["column study_date"] == set() and found["column note"] == {"birth date"}


@pytest.mark.slow
@pytest.mark.prefect_server
def test_dicom_bytes_around_the_pixels_are_still_searched(copy_out, ids, source):
    """The pixel values are no longer tokenised; the preamble, an element after the pixel
    data and bytes after the dataset still are."""
    paths = sorted((copy_out / "research").rglob("*.dcm"))[:3]
    ds = pydicom.dcmread(paths[0])
    ds.preamble = str(source.PatientID).encode().ljust(128, b"\0")
    ds.save_as(paths[0])
    ds = pydicom.dcmread(paths[1])
    ds.add_new(0xFFFCFFFC, "OB", str(source.AccessionNumber).encode().ljust(16, b" "))   # DataSetTrailingPadding
    ds.save_as(paths[1])
    with paths[2].open("ab") as fh:
        fh.write(b"\0" * 8 + str(source.PatientID).encode())
    hits, _ = _hits(copy_out, ids)
    rel = [str(p.relative_to(copy_out)) for p in paths]
    assert Hit(rel[0], "raw bytes", "mrn") in hits
    assert Hit(rel[1], "(FFFC,FFFC)", "accession") in hits
    assert Hit(rel[2], "raw bytes", "mrn") in hits
