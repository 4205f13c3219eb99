"""The plain runners (no Prefect): run_ingest on a small generated BIDS tree under ``{home}``,
a second run that redoes nothing, and run_ingest_downstream on an nnU-Net folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrifoundry.catalog.views import connect
from mrifoundry.params import DownstreamParams, IngestParams
from mrifoundry.run_lock import OutputBusy, RunLock
from mrifoundry.sample.bids_corpus import make_bids
from mrifoundry.tasks.ingest.runner import run_ingest, run_ingest_downstream
from tests.ingest.test_labelled3d_ingest import labels, save, volume


def _sql(research: Path, q: str, params=()) -> list[tuple]:
    con = connect(research)
    try:
        return con.execute(q, list(params)).fetchall()
    finally:
        con.close()


def test_run_ingest_fills_the_catalog_and_a_second_run_redoes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MRIFOUNDRY_HOME", str(tmp_path))
    root = make_bids(tmp_path / "tiny", broken=False)
    lines: list[str] = []
    params = IngestParams(bids="{home}/tiny", out="{home}/out", body_part="brain", workers=1)
    res = run_ingest(params, progress=lines.append)
    research = tmp_path / "out" / "research"
    assert res["dataset"] == "tiny" and res["outcomes"] == {"done": 4} and res["exams"] == 2
    assert res["catalog"]["exams"] == 2 and res["catalog"]["series"] == 4
    assert "4/4 files" in lines[0] and any(line.startswith("catalog: ") for line in lines)
    rows = _sql(research, "SELECT e.dataset, e.source, e.body_part, r.status, r.sequence_type FROM series r "
                          "JOIN exams e USING (exam_id) ORDER BY r.sequence_type")
    assert [r[:4] for r in rows] == [("tiny", "bids", "brain", "ok")] * 4
    assert sorted(r[4] for r in rows) == ["BOLD", "T1", "T1", "T2"]
    files = [Path(f) for (f,) in _sql(research, "SELECT nifti_file FROM series")]
    assert all(f.is_file() and f.is_relative_to(research) for f in files)
    assert Path(res["montage"]).is_file() and "# Ingest of `tiny`" in res["summary"]
    assert res["phi_audit"] is not None and str(root) not in res["phi_audit"]

    ledger = _sql(research, "SELECT item_id, status, attempt, finished FROM stage_results ORDER BY item_id")
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    again = run_ingest(params.model_copy(update={"phi_audit": False}))   # rerun=missing: the default
    assert again["outcomes"] == {"skipped": 4} and again["catalog"] == res["catalog"]
    assert again["phi_audit"] is None
    assert _sql(research, "SELECT item_id, status, attempt, finished FROM stage_results ORDER BY item_id") == ledger
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes


def test_run_ingest_waits_for_no_other_run_of_the_same_output(tmp_path):
    root = make_bids(tmp_path / "tiny", broken=False)
    out = tmp_path / "out"
    with RunLock(out / "state"), pytest.raises(OutputBusy):
        run_ingest(IngestParams(bids=str(root), out=str(out), phi_audit=False))


def test_run_ingest_downstream_reads_an_nnunet_folder(tmp_path):
    root = tmp_path / "Dataset001_Tiny"
    for i in range(4):
        for ch in range(2):
            save(volume(10 * i + ch), root / "imagesTr" / f"case{i}_{ch:04d}.nii.gz")
        save(labels(), root / "labelsTr" / f"case{i}.nii.gz")
    save(volume(99), root / "imagesTr" / "lonely_0000.nii.gz")
    (root / "dataset.json").write_text('{"channel_names": {"0": "T1", "1": "FLAIR"}, '
                                       '"labels": {"background": 0, "a": 1, "b": 2, "c": 4}}')
    lines: list[str] = []
    res = run_ingest_downstream(DownstreamParams(root=str(root), dataset_id="tiny3d", out=str(tmp_path / "out"),
                                                 voxel_size_mm=None, split=(0.5, 0.25, 0.25), folds=0),
                                progress=lines.append)
    assert res["layout"] == "msd" and res["n_volumes"] == 4 and res["channels"] == ["T1", "FLAIR"]
    assert res["label_names"] == {"0": "background", "1": "a", "2": "b", "4": "c"}
    assert [s["case"] for s in res["skipped"]] == ["lonely"] and res["patients_per_fold"] is None
    assert "4/4 cases" in lines[0] and "4 volumes of 4 patients, 1 skipped" in lines[-1]
    rows = _sql(tmp_path / "out" / "research", "SELECT case_id, n_channels, fold FROM labelled_volumes "
                                                "WHERE dataset_id = 'tiny3d' ORDER BY case_id")
    assert rows == [(f"case{i}", 2, None) for i in range(4)]
    assert np.isclose(sum(res["patients_per_split"].values()), 4)


def test_an_ingest_that_quarantines_rebuilds_its_review_page_without_the_exam(tmp_path):
    """The review page is built before the audit; a leak planted in one ingested exam's research
    files is quarantined, and the run rebuilds the page from what is left."""
    import json

    from mrifoundry.sample.bids_corpus import PHI
    from mrifoundry.tasks.curation.audit.phi_audit import PhiLeakError
    root = make_bids(tmp_path / "tiny", broken=False)
    out = tmp_path / "out"
    params = IngestParams(bids=str(root), out=str(out), body_part="brain", workers=1, phi_audit=False)
    run_ingest(params)
    research = out / "research"

    def page_exams() -> set[str]:
        text = (research / "qc" / "data.js").read_text()
        return {s["exam_id"] for s in json.loads(text.removeprefix("window.MRIF_QC = ").rstrip(";\n"))["series"]}
    exams = page_exams()
    assert len(exams) == 2
    import nibabel as nib
    leaky = sorted(exams)[0]
    nii = sorted((research / "nifti" / leaky).rglob("*.nii.gz"))[0]
    img = nib.load(nii)
    img.header["descrip"] = PHI["PatientName"].encode()   # held in restricted/ from the source sidecar
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header), nii)
    with pytest.raises(PhiLeakError):
        run_ingest(params.model_copy(update={"phi_audit": True}))
    assert page_exams() == exams - {leaky}
    assert not (research / "nifti" / leaky).exists()
    kept = {s for (s,) in _sql(research, "SELECT series_id FROM series")}
    assert kept and {p.stem for p in (research / "qc" / "thumbs").glob("*")} == kept
