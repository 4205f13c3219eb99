"""One parse per de-identified file within an exam (tasks/curation/exam_reads.py): the datasets
de-identification wrote are handed on, only while the file is the one written, and the outputs
are byte for byte those of stages that read every file back from disk."""
from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from mrifoundry.params import CurateParams
from mrifoundry.tasks.curation import exam_reads, stages
from mrifoundry.tasks.curation.selection.exams import select_exams
from mrifoundry.tasks.curation.workspace import Workspace
from tests.dicom_factory import oblique_iop, write_series


def test_a_kept_dataset_is_handed_on_until_its_file_changes(tmp_path):
    src = write_series(tmp_path / "s", n_slices=2)
    written = tmp_path / "w" / "0000.dcm"
    written.parent.mkdir()
    ds = pydicom.dcmread(src[0])
    ds.save_as(written)
    assert exam_reads.read(written) is not ds                      # outside a scope: always dcmread
    with exam_reads.exam_scope() as reads:
        exam_reads.keep(written, ds)
        assert exam_reads.read(written) is ds
        # counted: a header, the stored pixels and the array readers will decode and cache on it
        assert reads.used == 16_384 + len(ds.PixelData) + ds.Rows * ds.Columns * 2
        moved = tmp_path / "final" / "0000.dcm"                    # the renames that publish a series
        written.parent.rename(moved.parent)
        assert exam_reads.read(moved, stop_before_pixels=True) is ds
        other = pydicom.dcmread(src[1])
        other.PatientName = "Someone^Else^Longer"
        other.save_as(moved)                                       # rewritten in place: not the kept one
        got = exam_reads.read(moved)
        assert got is not ds and str(got.PatientName) == "Someone^Else^Longer"
        ds.save_as(moved)
        exam_reads.keep(moved, ds)
        exam_reads.forget([moved])
        assert exam_reads.read(moved) is not ds
    with exam_reads.exam_scope(limit_mb=0):                        # over the budget: nothing kept
        exam_reads.keep(moved, ds)
        assert exam_reads.read(moved) is not ds


def _outputs(out) -> dict:
    """Every research output as comparable values: DICOM, PNG and sidecar bytes, NIfTI voxels,
    affine and header (gzip's own time stamp aside)."""
    got = {}
    for path in sorted((out / "research").rglob("*")):
        rel = str(path.relative_to(out))
        if path.name.endswith(".nii.gz"):
            got[rel] = gzip.decompress(path.read_bytes())
        elif path.name == "continuity.json" or path.suffix in (".dcm", ".png", ".json", ".bval", ".bvec", ".tsv") \
                and not rel.startswith(("research/catalog", "research/work")):   # others hold timings
            got[rel] = path.read_bytes()
    return got


def _curate(tmp_path, name, salt, keep_mb, monkeypatch):
    monkeypatch.setenv("MRIFOUNDRY_EXAM_READS_MB", str(keep_mb))
    hits = []
    real = exam_reads.ExamReads.get

    def counted(self, path):
        ds = real(self, path)
        hits.append(ds is not None)
        return ds
    monkeypatch.setattr(exam_reads.ExamReads, "get", counted)
    ws = Workspace(tmp_path / name)
    (ws.restricted).mkdir(parents=True, exist_ok=True)
    (ws.restricted / "salt").write_text(salt)
    params = CurateParams(archive=str(tmp_path / "arch"), reports=None, out=str(ws.out), workers=1,
                          review_page=False, phi_audit=False)
    for exam_id in select_exams(ws, params).exam_ids:
        assert [o.status for o in stages.curate_exam(ws, params, exam_id)] == ["done"] * 5
    monkeypatch.undo()
    return _outputs(ws.out), hits


@pytest.mark.parametrize("keep_mb", [256, 0.02])   # 0.02 MB: some files kept, the rest read
def test_outputs_are_those_of_stages_that_read_from_disk(tmp_path, monkeypatch, keep_mb):
    extra = {"AccessionNumber": "HAND1", "PatientID": "P1", "PatientName": "Zebulon^Quixote"}
    # de-identification cleans the name out of the description, which continuity reads (series meta)
    a = write_series(tmp_path / "arch" / "a", n_slices=6, rows=24, cols=20, iop=oblique_iop(), extra=extra,
                     series_description="T2 TSE AX Zebulon")
    study = {"StudyInstanceUID": pydicom.dcmread(a[0]).StudyInstanceUID}
    write_series(tmp_path / "arch" / "b", n_slices=5, n_time=3, temporal_tags="tpi", series_description="BOLD",
                 extra={**extra, **study})
    write_series(tmp_path / "arch" / "c", n_slices=6, transfer_syntax=RLELossless, series_description="T1 RLE",
                 volume=np.arange(6 * 16 * 16, dtype=np.uint16).reshape(6, 16, 16) % 700, extra={**extra, **study})
    salt = "s" * 32
    handed, hits = _curate(tmp_path, "handed", salt, keep_mb, monkeypatch)
    read_back, no_hits = _curate(tmp_path, "read", salt, 0, monkeypatch)
    assert not any(no_hits)
    assert sum(hits) >= (60 if keep_mb == 256 else 1)   # continuity (2 reads) and convert, 17 files
    assert keep_mb == 256 or not all(hits)
    assert handed.keys() == read_back.keys()
    assert sum(k.endswith(".nii.gz") for k in handed) == 3 and sum("/png/" in k for k in handed) == 6 + 15 + 6
    assert [k for k in handed if handed[k] != read_back[k]] == []
    assert b"Zebulon" not in b"".join(v for k, v in handed.items() if k.endswith("continuity.json"))
    shutil.rmtree(tmp_path / "handed")
    assert os.listdir(tmp_path / "read")
