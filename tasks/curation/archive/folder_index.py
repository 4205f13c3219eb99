"""The folder archive's header index, built by streaming: bounded memory at any archive size.

Pass 1 walks the folder and writes (path, size, mtime) in chunks; DuckDB joins that with the
previous index to find new or changed files; pass 2 parses only those, in chunks, in a
process pool; a final SQL statement attributes unparseable files to the study of their
folder and writes the index sorted by study key, so a lookup by key reads one row group.
"""
from __future__ import annotations

import os
import shutil
import stat as _stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pydicom

from mrifoundry.atomic import atomic_path
from mrifoundry.catalog.store import write_parquet_atomic as write_parquet
from mrifoundry.duck import quiet_connect
from mrifoundry.tasks.curation.archive.containers import CONTAINER_SUFFIXES, expand_container  # noqa: F401 - re-exported
from mrifoundry.tasks.curation.archive.files import (  # noqa: F401 - re-exported
    READ_SECONDS, WalkLimits, decode_path, encode_path, looks_like_dicom, time_limit,
)

MEDIA_DIRECTORY_SOP = "1.2.840.10008.1.3.10"  # DICOMDIR
_INDEX_TAGS = ["AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Modality",
               "MediaStorageSOPClassUID", "SOPClassUID"]
INDEX_SCHEMA = pa.schema([
    ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("folder", pa.string()),
    ("parsed", pa.bool_()), ("accession_number", pa.string()), ("study_uid", pa.string()),
    ("series_uid", pa.string()), ("patient_mrn", pa.string()), ("modality", pa.string()), ("study_key", pa.string()),
])
PARSED_SCHEMA = pa.schema([f for f in INDEX_SCHEMA if f.name not in ("size", "mtime_ns", "folder")])
STAT_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                         ("folder", pa.string())])
CHUNK = 5000
SOURCES_SCHEMA = pa.schema([
    ("path", pa.string()), ("kind", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("message", pa.string()), ("n_members", pa.int64()),
])


def study_key(acc: str, uid: str) -> str:
    return acc if acc else f"uid:{uid}"


def read_header(path: str) -> dict:
    """Index columns of one file; ``parsed`` False for non-DICOM, None for a DICOMDIR."""
    row = dict(path=path, parsed=False, accession_number=None, study_uid=None, series_uid=None,
               patient_mrn=None, modality=None, study_key=None)
    real = decode_path(path)
    if not looks_like_dicom(real):
        return row
    try:
        # force: raw datasets without preamble/file meta exist in the wild; junk is caught below
        with time_limit(READ_SECONDS):
            ds = pydicom.dcmread(real, stop_before_pixels=True, specific_tags=_INDEX_TAGS, force=True)
    except Exception:  # noqa: BLE001 — forced parsing of non-DICOM raises many types
        return row
    meta = getattr(ds, "file_meta", None)
    sop = str(getattr(ds, "SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "") or "")
    if sop == MEDIA_DIRECTORY_SOP or "DirectoryRecordSequence" in ds:
        row["parsed"] = None
        return row
    uid = str(ds.get("StudyInstanceUID", "") or "")
    if not uid:
        return row
    acc = str(ds.get("AccessionNumber", "") or "").strip()
    row.update(parsed=True, accession_number=acc, study_uid=uid, series_uid=str(ds.get("SeriesInstanceUID", "")),
               patient_mrn=str(ds.get("PatientID", "") or ""), modality=str(ds.get("Modality", "") or ""),
               study_key=study_key(acc, uid))
    return row


def sources_path(index_path: Path) -> Path:
    """Where the walk lists what it did not index (special files, containers …): restricted."""
    return Path(index_path).with_name("archive_sources.parquet")


def archive_sources(index_path: Path) -> list[dict]:
    """Rows of :data:`SOURCES_SCHEMA` from the last walk (empty before the first)."""
    path = sources_path(index_path)
    return pq.read_table(path).to_pylist() if path.exists() else []


def unattributed_files(index_path: Path) -> list[str]:
    """Indexed files that are not DICOM and share a folder with no study: nothing curates
    them, so the selection step ledgers each (restricted paths, stored form of
    :func:`encode_path`, never logged)."""
    con = quiet_connect()
    try:
        return [r[0] for r in con.execute(
            f"SELECT path FROM read_parquet({sql_literal(index_path)}) WHERE parsed = false AND study_key IS NULL "
            "ORDER BY path").fetchall()]
    finally:
        con.close()


def _read_headers(paths: list[str]) -> list[dict]:
    return [read_header(p) for p in paths]


def sql_literal(p: Path | str) -> str:
    """A path or text as a quoted SQL string literal."""
    return "'" + str(p).replace("'", "''") + "'"


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def _classify(path: str, real_root: str, limits: WalkLimits):
    """(kind, stat, None) for a regular file the walk may open, else (kind, None, (reason, message)).
    Only regular files are ever opened: a FIFO blocks ``open()`` forever, ``/dev/zero`` never ends."""
    try:
        st = os.lstat(path)
        if _stat.S_ISLNK(st.st_mode):
            if not limits.follow_symlinks and not _inside(os.path.realpath(path), real_root):
                return "symlink", None, ("outside_archive", "a symlink to outside the archive (not followed)")
            st = os.stat(path)
    except OSError as e:
        return "file", None, ("unreadable_source", f"{type(e).__name__} errno {e.errno} (a broken link?)")
    if not _stat.S_ISREG(st.st_mode):
        what = ("FIFO" if _stat.S_ISFIFO(st.st_mode) else "socket" if _stat.S_ISSOCK(st.st_mode)
                else "device" if _stat.S_ISCHR(st.st_mode) or _stat.S_ISBLK(st.st_mode) else "not a regular file")
        return "file", None, ("special_file", what)
    if st.st_size > limits.max_file_bytes:
        return "file", None, ("file_too_large", f"{st.st_size >> 20} MiB > {limits.max_file_bytes >> 20} MiB")
    if not os.access(path, os.R_OK):
        return "file", None, ("unreadable_source", "permission denied")
    return "file", st, None


def build_index(root: Path, index_path: Path, workers: int = 2, limits: WalkLimits = WalkLimits()) -> int:
    """(Re)build ``index_path`` for the folder ``root``; files unchanged since the previous
    index (same size and mtime) are not parsed again. What is not indexed (special files, links
    out of the archive, containers) is listed in :func:`sources_path`. Returns the number of
    files indexed."""
    work = index_path.with_name(f".{index_path.stem}.build{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    (work / "stat").mkdir(parents=True)
    (work / "parsed").mkdir()
    try:
        buf: list[tuple[str, int, int, str]] = []
        n_parts = 0
        root = Path(os.path.abspath(root))
        real_root = os.path.realpath(root)

        def flush_stat():
            nonlocal n_parts, buf
            if buf:
                cols = list(zip(*buf))
                pq.write_table(pa.table({"path": cols[0], "size": cols[1], "mtime_ns": cols[2], "folder": cols[3]},
                                        schema=STAT_SCHEMA), work / "stat" / f"{n_parts:06d}.parquet")
                n_parts += 1
                buf = []
        expanded = index_path.parent / "expanded"
        sources: list[dict] = []

        def add(path: str, st) -> None:
            buf.append((encode_path(path), st.st_size, st.st_mtime_ns, encode_path(os.path.dirname(path))))
            if len(buf) >= CHUNK:
                flush_stat()

        def note(path: str, kind: str, status: str, reason: str | None, message: str, n: int | None = None):
            sources.append(dict(path=encode_path(path), kind=kind, status=status, reason=reason, message=message,
                                n_members=n))

        def unreadable(err: OSError) -> None:   # os.walk could not list a folder
            note(err.filename or str(root), "folder", "rejected", "unreadable_source",
                 f"{type(err).__name__} errno {err.errno} listing the folder")
        for dirpath, dirs, files in os.walk(root, onerror=unreadable):
            for name in dirs:   # a linked folder is never walked: its files are indexed where they live
                p = os.path.join(dirpath, name)
                if os.path.islink(p) and not _inside(os.path.realpath(p), real_root):
                    note(p, "folder", "rejected", "outside_archive", "a folder symlink to outside the archive")
            for name in files:
                p = os.path.join(dirpath, name)
                kind, st, why = _classify(p, real_root, limits)
                if why is not None:
                    note(p, kind, "rejected", why[0], why[1])
                    continue
                if name.lower().endswith(CONTAINER_SUFFIXES) and not looks_like_dicom(p):
                    members, status, reason, message = expand_container(p, st.st_size, st.st_mtime_ns, expanded,
                                                                        limits)
                    note(p, "container", status, reason, message, len(members) if members is not None else None)
                    for m in members or []:
                        add(m, os.stat(m))
                    continue
                add(p, st)
        flush_stat()
        if n_parts == 0:
            pq.write_table(STAT_SCHEMA.empty_table(), work / "stat" / "000000.parquet")
        write_parquet(pa.Table.from_pylist(sources, schema=SOURCES_SCHEMA), sources_path(index_path))
        con = quiet_connect()
        stat = f"read_parquet({sql_literal(work / 'stat' / '*.parquet')})"
        # an index written before the folder column existed is rebuilt from scratch
        prev = (f"read_parquet({sql_literal(index_path)})" if index_path.exists()
                and "folder" in pq.read_schema(index_path).names else None)
        todo_sql = (f"SELECT s.path FROM {stat} s LEFT JOIN {prev} p ON p.path = s.path "
                    f"AND p.size = s.size AND p.mtime_ns = s.mtime_ns WHERE p.path IS NULL"
                    if prev else f"SELECT path FROM {stat}")
        reader = con.sql(todo_sql).to_arrow_reader(CHUNK)
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        try:
            for k, batch in enumerate(reader):
                paths = batch.column(0).to_pylist()
                if pool:
                    step = max(1, len(paths) // (workers * 4))
                    rows = [r for part in pool.map(_read_headers, [paths[i:i + step] for i in range(0, len(paths), step)])
                            for r in part]
                else:
                    rows = _read_headers(paths)
                pq.write_table(pa.Table.from_pylist(rows, schema=PARSED_SCHEMA),
                               work / "parsed" / f"{k:06d}.parquet")
        finally:
            if pool:
                pool.shutdown()
        if not any((work / "parsed").iterdir()):   # nothing new to parse: an empty part keeps the query typed
            pq.write_table(PARSED_SCHEMA.empty_table(), work / "parsed" / "000000.parquet")
        parsed = (f"SELECT s.path, s.size, s.mtime_ns, s.folder, r.* EXCLUDE (path) "
                  f"FROM read_parquet({sql_literal(work / 'parsed' / '*.parquet')}) r JOIN {stat} s USING (path)")
        reused = (f"SELECT p.* FROM {prev} p JOIN {stat} s ON p.path = s.path AND p.size = s.size "
                  f"AND p.mtime_ns = s.mtime_ns") if prev else None
        union = " UNION ALL ".join(f"({q})" for q in (parsed, reused) if q)
        with atomic_path(index_path) as tmp:
            # a file that does not parse is attributed to its folder's study when exactly one study lives there
            con.execute(f"""
                COPY (
                  WITH f AS ({union}),
                  d AS (SELECT folder, min(study_key) AS k, count(DISTINCT study_key) AS n
                        FROM f WHERE parsed GROUP BY 1)
                  SELECT f.* REPLACE (CASE WHEN f.parsed = false AND d.n = 1 THEN d.k ELSE f.study_key END
                                      AS study_key)
                  FROM f LEFT JOIN d USING (folder)
                  ORDER BY study_key NULLS LAST, path
                ) TO {sql_literal(tmp)} (FORMAT parquet, ROW_GROUP_SIZE 20000)""")
            n = con.execute(f"SELECT COUNT(*) FROM read_parquet({sql_literal(tmp)})").fetchone()[0]
            con.close()
        return n
    finally:
        shutil.rmtree(work, ignore_errors=True)
