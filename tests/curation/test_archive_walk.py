"""The archive walk on hostile entries (issue 19): bytes-safe names, only regular files opened,
links kept inside the archive, and one expansion budget per container."""
from __future__ import annotations

import gzip
import io
import os
import time
import zipfile
from pathlib import Path

import pytest

from mrifoundry.tasks.curation.archive.folder import FolderArchive
from mrifoundry.tasks.curation.archive.folder_index import (WalkLimits, archive_sources, decode_path, encode_path,
                                                 expand_container, looks_like_dicom)
from tests.dicom_factory import write_series


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    return buf.getvalue()


def test_non_utf8_paths_round_trip_and_stay_valid_text():
    raw = b"/archive/M\xfcller Hans/IM_M\xfcller_0001.dcm"
    path = os.fsdecode(raw)
    stored = encode_path(path)
    stored.encode("utf-8")                       # Arrow/DuckDB can hold it
    assert decode_path(stored) == path and os.fsencode(decode_path(stored)) == raw
    assert encode_path("/plain/ü.dcm") == "/plain/ü.dcm"   # valid UTF-8 is stored as it is


def test_sniff_rejects_zeros_and_text_in_constant_time(tmp_path):
    (tmp_path / "zeros").write_bytes(bytes(32 << 20))
    (tmp_path / "text").write_text("hello world, not an image\n" * 10)
    dcm = write_series(tmp_path / "s", n_slices=1)[0]
    t0 = time.perf_counter()
    assert not looks_like_dicom(str(tmp_path / "zeros"))
    assert time.perf_counter() - t0 < 0.5
    assert not looks_like_dicom(str(tmp_path / "text"))
    assert looks_like_dicom(str(dcm))
    raw = dcm.read_bytes()[132:]   # the dataset without preamble starts with group 0002
    (tmp_path / "raw").write_bytes(raw)
    assert looks_like_dicom(str(tmp_path / "raw"))


def test_zip_bomb_is_refused_within_the_ratio_budget(tmp_path):
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(_zip({"a.dcm": bytes(64 << 20)}))
    limits = WalkLimits(ratio_slack_bytes=1 << 20)
    t0 = time.perf_counter()
    members, status, reason, message = expand_container(str(bomb), bomb.stat().st_size, 1, tmp_path / "x", limits)
    assert (members, status, reason) == (None, "rejected", "container_refused")
    assert "100x" in message and time.perf_counter() - t0 < 5
    assert not [p for p in (tmp_path / "x").rglob("*") if p.is_file()]   # nothing half-expanded is left


def test_absolute_cap_covers_gzip_too(tmp_path):
    gz = tmp_path / "big.dcm.gz"
    gz.write_bytes(gzip.compress(os.urandom(3 << 20)))   # incompressible: the ratio rule does not fire
    limits = WalkLimits(max_expanded_bytes=2 << 20)
    _, status, reason, _ = expand_container(str(gz), gz.stat().st_size, 1, tmp_path / "x", limits)
    assert (status, reason) == ("rejected", "container_refused")


def test_gzip_of_zeros_is_empty_not_silently_dropped(tmp_path):
    gz = tmp_path / "zeros.gz"
    gz.write_bytes(gzip.compress(bytes(8 << 20)))
    members, status, reason, _ = expand_container(str(gz), gz.stat().st_size, 1, tmp_path / "x")
    assert (members, status, reason) == ([], "rejected", "container_empty")


def test_long_unsafe_member_names_are_renamed_not_fatal(tmp_path):
    files = write_series(tmp_path / "s", n_slices=4)
    members = {f"../../{f.name}": f.read_bytes() for f in files}
    members["L" * 250 + ".dcm"] = files[0].read_bytes()
    members["dir/\x01ctrl.dcm"] = files[1].read_bytes()
    z = tmp_path / "a.zip"
    z.write_bytes(_zip(members))
    got, status, _, _ = expand_container(str(z), z.stat().st_size, 1, tmp_path / "x")
    assert status == "done" and len(got) == 6
    assert all(Path(m).parent.parent == tmp_path / "x" for m in got)        # flat, inside the folder
    assert all(len(Path(m).name.encode()) <= 100 for m in got)
    assert not (tmp_path.parent / files[0].name).exists()


def test_nesting_depth_is_bounded(tmp_path):
    files = write_series(tmp_path / "s", n_slices=2)
    data = _zip({f.name: f.read_bytes() for f in files})
    ok = tmp_path / "two.zip"
    ok.write_bytes(_zip({"inner.zip": data}))
    got, status, _, _ = expand_container(str(ok), ok.stat().st_size, 1, tmp_path / "x")
    assert status == "done" and sorted(Path(g).name[6:] for g in got) == sorted(f.name for f in files)
    for _ in range(3):
        data = _zip({"next.zip": data})
    deep = tmp_path / "deep.zip"
    deep.write_bytes(data)
    _, status, reason, message = expand_container(str(deep), deep.stat().st_size, 1, tmp_path / "y")
    assert (status, reason) == ("rejected", "container_refused") and "nested" in message


def test_walk_opens_only_regular_files_inside_the_archive(tmp_path):
    root = tmp_path / "arch"
    good = write_series(root / "s", n_slices=6, extra={"AccessionNumber": "ACC1"})
    outside = write_series(tmp_path / "elsewhere", n_slices=6, extra={"AccessionNumber": "OUT1"})
    os.mkfifo(root / "s" / "pipe.dcm")
    os.symlink("/dev/zero", root / "s" / "zero.dcm")
    os.symlink(outside[0], root / "out.dcm")
    os.symlink(tmp_path / "elsewhere", root / "outdir")
    os.symlink(good[0], root / "s" / "inside.dcm")
    arch = FolderArchive(root, tmp_path / "idx" / "archive_index.parquet")
    t0 = time.perf_counter()
    assert [s.key for s in arch.studies()] == ["ACC1"]      # never the outside patient
    assert time.perf_counter() - t0 < 30                   # the FIFO did not block
    got = {(Path(r["path"]).name, r["reason"]) for r in archive_sources(arch.index_path)}
    assert got == {("pipe.dcm", "special_file"), ("zero.dcm", "outside_archive"), ("out.dcm", "outside_archive"),
                   ("outdir", "outside_archive")}
    followed = FolderArchive(root, tmp_path / "idx2" / "archive_index.parquet",
                             limits=WalkLimits(follow_symlinks=True))
    assert sorted(s.key for s in followed.studies()) == ["ACC1", "OUT1"]   # opted in: the file link is followed
    reasons = {(Path(r["path"]).name, r["reason"]) for r in archive_sources(followed.index_path)}
    assert ("zero.dcm", "special_file") in reasons and ("out.dcm", "outside_archive") not in reasons


def test_latin1_names_are_indexed_and_fetched(tmp_path):
    root = tmp_path / "arch"
    files = write_series(tmp_path / "src", n_slices=6, extra={"AccessionNumber": "ACC7"})
    folder = os.fsencode(str(root)) + b"/M\xfcller"
    os.makedirs(folder)
    for i, f in enumerate(files):
        with open(folder + b"/IM_M\xfcller_%d.dcm" % i, "wb") as fh:
            fh.write(f.read_bytes())
    arch = FolderArchive(root, tmp_path / "idx" / "archive_index.parquet")
    (study,) = arch.studies()
    fetched = arch.fetch(study, tmp_path)
    assert len(fetched) == 6 and all(p.exists() for p in fetched)


@pytest.mark.parametrize("size_mb,limit_mb,indexed", [(3, 2, False), (1, 2, True)])
def test_max_file_size(tmp_path, size_mb, limit_mb, indexed):
    root = tmp_path / "arch"
    root.mkdir()
    (root / "big.bin").write_bytes(b"x" * (size_mb << 20))
    arch = FolderArchive(root, tmp_path / "idx.parquet", limits=WalkLimits(max_file_bytes=limit_mb << 20))
    arch.ensure_index()
    reasons = [r["reason"] for r in archive_sources(arch.index_path)]
    assert reasons == ([] if indexed else ["file_too_large"])


def test_header_reads_are_bounded_in_time():
    from mrifoundry.tasks.curation.archive.folder_index import time_limit
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        with time_limit(0.2):
            while True:
                pass
    assert time.perf_counter() - t0 < 2
