"""FolderArchive: any folder layout, DICOMDIR skipped, orphans attributed, incremental index."""
from __future__ import annotations

import os
import shutil

import pytest
from pydicom.fileset import FileSet

from mrifoundry.errors import RetrievalError
from mrifoundry.tasks.curation.archive import FolderArchive, open_archive
from tests.dicom_factory import write_series


def _two_studies(root):
    a = write_series(root / "nested" / "p1" / "st1" / "se1", n_slices=6, extra={"AccessionNumber": "ACC1"})
    b = write_series(root / "flat", n_slices=5, extra={"AccessionNumber": ""})
    return a, b


def test_studies_by_accession_and_by_uid(tmp_path):
    a, b = _two_studies(tmp_path / "arch")
    arch = FolderArchive(tmp_path / "arch", tmp_path / "index.parquet")
    keys = {s.key: s for s in arch.studies()}
    assert "ACC1" in keys and keys["ACC1"].n_files == 6
    uid_keys = [k for k in keys if k.startswith("uid:")]
    assert len(uid_keys) == 1 and keys[uid_keys[0]].n_files == 5
    assert sorted(map(str, arch.fetch(keys["ACC1"], tmp_path / "x"))) == sorted(map(str, a))
    assert arch.find("NOPE") == []


def test_dicomdir_is_not_an_image_and_files_behind_it_are_found(tmp_path):
    # the attributes DICOMDIR's PATIENT/STUDY/SERIES/IMAGE records require
    src = write_series(tmp_path / "src", n_slices=4, extra={
        "AccessionNumber": "ACC9", "PatientID": "P9", "PatientName": "X^Y", "StudyDate": "20190101",
        "StudyTime": "101010", "StudyID": "1", "SeriesNumber": 1})
    fs = FileSet()
    for p in src:
        fs.add(p)
    fs.write(tmp_path / "media")
    assert (tmp_path / "media" / "DICOMDIR").exists()
    arch = FolderArchive(tmp_path / "media", tmp_path / "index.parquet")
    (study,) = arch.studies()
    assert study.key == "ACC9" and study.n_files == 4
    assert not any(f.name == "DICOMDIR" for f in arch.fetch(study, tmp_path))


def test_unparseable_file_is_attributed_to_its_folders_study(tmp_path):
    a, _ = _two_studies(tmp_path / "arch")
    junk = a[0].parent / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    arch = FolderArchive(tmp_path / "arch", tmp_path / "index.parquet")
    files = arch.fetch(arch.find("ACC1")[0], tmp_path)
    assert junk in files and len(files) == 7


def test_index_is_incremental(tmp_path, monkeypatch):
    _two_studies(tmp_path / "arch")
    FolderArchive(tmp_path / "arch", tmp_path / "index.parquet").studies()
    new = write_series(tmp_path / "arch" / "later", n_slices=3, extra={"AccessionNumber": "ACC2"})
    import mrifoundry.tasks.curation.archive.folder_index as mod
    seen = []
    real = mod._read_headers
    monkeypatch.setattr(mod, "_read_headers", lambda paths: seen.extend(paths) or real(paths))
    arch = FolderArchive(tmp_path / "arch", tmp_path / "index.parquet", workers=1)
    assert {s.key for s in arch.studies()} >= {"ACC1", "ACC2"}
    assert sorted(seen) == sorted(map(str, new))  # only the new files were parsed


def test_missing_archive_is_unreachable(tmp_path):
    with pytest.raises(RetrievalError) as e:
        open_archive(str(tmp_path / "nowhere"), tmp_path).studies()
    assert e.value.reason == "archive_unreachable"


def test_vanished_file_is_a_retrieval_error(tmp_path):
    a, _ = _two_studies(tmp_path / "arch")
    arch = FolderArchive(tmp_path / "arch", tmp_path / "index.parquet")
    study = arch.find("ACC1")[0]
    os.unlink(a[0])
    with pytest.raises(RetrievalError):
        arch.fetch(study, tmp_path)
    shutil.rmtree(tmp_path / "arch")
