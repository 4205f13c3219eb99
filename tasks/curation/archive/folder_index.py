"""The folder archive's header index, built by streaming: bounded memory at any archive size.

Pass 1 walks the folder and writes (path, size, mtime) in chunks; DuckDB joins that with the
previous index to find new or changed files; pass 2 parses only those, in chunks, in a
process pool; a final SQL statement attributes unparseable files to the study of their
folder and writes the index sorted by study key, so a lookup by key reads one row group.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
from mrifoundry.duck import quiet_connect

MEDIA_DIRECTORY_SOP = "1.2.840.10008.1.3.10"  # DICOMDIR
_INDEX_TAGS = ["AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Modality",
               "MediaStorageSOPClassUID", "SOPClassUID"]
INDEX_SCHEMA = pa.schema([
    ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("parsed", pa.bool_()),
    ("accession_number", pa.string()), ("study_uid", pa.string()), ("series_uid", pa.string()),
    ("patient_mrn", pa.string()), ("modality", pa.string()), ("study_key", pa.string()),
])
STAT_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64())])
CHUNK = 5000
CONTAINER_SUFFIXES = (".zip", ".gz", ".tgz", ".tar")
MAX_EXPANDED_BYTES = 64 << 30   # a container that claims more is not expanded (zip bomb guard)


def expand_container(path: str, size: int, mtime_ns: int, root: Path) -> list[str] | None:
    """Members of a zip, tar (any compression) or gzip file, extracted once under
    ``root/<key>/`` (restricted zone; key = hash of path, size and mtime, so a changed
    container is expanded anew). None when the file cannot be opened as a container: it is
    then indexed like any other file (and ledgered as unreadable). Member names are
    flattened: nothing is written outside ``root``."""
    key = hashlib.sha256(f"{path}|{size}|{mtime_ns}".encode()).hexdigest()[:20]
    dest = root / key
    if not dest.is_dir():
        tmp = root / f".{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _extract(path, tmp)
        except Exception:  # noqa: BLE001 - corrupt or not a container: index the file itself
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        os.replace(tmp, dest)
    return sorted(str(p) for p in dest.rglob("*") if p.is_file())


def _copy_members(dest: Path, members: list) -> None:
    """members: (name, size, open function); names flattened so nothing lands outside ``dest``."""
    if sum(size for _, size, _ in members) > MAX_EXPANDED_BYTES:
        raise ValueError("container too large")
    for i, (name, _, opener) in enumerate(members):
        with opener() as src, open(dest / f"{i:05d}_{os.path.basename(name.rstrip('/')) or 'member'}", "wb") as out:
            shutil.copyfileobj(src, out)


def _extract(path: str, dest: Path) -> None:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            _copy_members(dest, [(m.filename, m.file_size, lambda m=m: zf.open(m))
                                 for m in zf.infolist() if not m.is_dir()])
        return
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            _copy_members(dest, [(m.name, m.size, lambda m=m: tf.extractfile(m)) for m in tf.getmembers() if m.isfile()])
        return
    name = os.path.basename(path)
    _copy_members(dest, [(name[:-3] if name.lower().endswith(".gz") else name, 0, lambda: gzip.open(path, "rb"))])


def study_key(acc: str, uid: str) -> str:
    return acc if acc else f"uid:{uid}"


def read_header(path: str) -> dict:
    """Index columns of one file; ``parsed`` False for non-DICOM, None for a DICOMDIR."""
    row = dict(path=path, parsed=False, accession_number=None, study_uid=None, series_uid=None,
               patient_mrn=None, modality=None, study_key=None)
    try:
        # force: raw datasets without preamble/file meta exist in the wild; junk is caught below
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_INDEX_TAGS, force=True)
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


def unattributed_files(index_path: Path) -> list[str]:
    """Indexed files that are not DICOM and share a folder with no study: nothing curates
    them, so the selection step ledgers each (restricted paths, never logged)."""
    con = quiet_connect()
    try:
        return [r[0] for r in con.execute(
            f"SELECT path FROM read_parquet({_q(index_path)}) WHERE parsed = false AND study_key IS NULL "
            "ORDER BY path").fetchall()]
    finally:
        con.close()


def _read_headers(paths: list[str]) -> list[dict]:
    return [read_header(p) for p in paths]


def _q(p: Path | str) -> str:
    return "'" + str(p).replace("'", "''") + "'"


def build_index(root: Path, index_path: Path, workers: int = 2) -> int:
    """(Re)build ``index_path`` for the folder ``root``; files unchanged since the previous
    index (same size and mtime) are not parsed again. Returns the number of files indexed."""
    work = index_path.with_name(f".{index_path.stem}.build{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    (work / "stat").mkdir(parents=True)
    (work / "parsed").mkdir()
    try:
        buf: list[tuple[str, int, int]] = []
        n_parts = 0

        def flush_stat():
            nonlocal n_parts, buf
            if buf:
                cols = list(zip(*buf))
                pq.write_table(pa.table({"path": cols[0], "size": cols[1], "mtime_ns": cols[2]}, schema=STAT_SCHEMA),
                               work / "stat" / f"{n_parts:06d}.parquet")
                n_parts += 1
                buf = []
        expanded = index_path.parent / "expanded"
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                p = os.path.join(dirpath, name)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                members = (expand_container(p, st.st_size, st.st_mtime_ns, expanded)
                           if name.lower().endswith(CONTAINER_SUFFIXES) else None)
                for m in members if members is not None else [p]:
                    mst = st if m == p else os.stat(m)
                    buf.append((m, mst.st_size, mst.st_mtime_ns))
                if len(buf) >= CHUNK:
                    flush_stat()
        flush_stat()
        if n_parts == 0:
            pq.write_table(STAT_SCHEMA.empty_table(), work / "stat" / "000000.parquet")
        con = quiet_connect()
        stat = f"read_parquet({_q(work / 'stat' / '*.parquet')})"
        prev = f"read_parquet({_q(index_path)})" if index_path.exists() else None
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
                pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA.remove(1).remove(1)),
                               work / "parsed" / f"{k:06d}.parquet")
        finally:
            if pool:
                pool.shutdown()
        parsed_glob = work / "parsed" / "*.parquet"
        parsed = (f"SELECT s.path, s.size, s.mtime_ns, r.* EXCLUDE (path) FROM read_parquet({_q(parsed_glob)}) r "
                  f"JOIN {stat} s USING (path)") if list((work / "parsed").glob("*.parquet")) else None
        reused = (f"SELECT p.* FROM {prev} p JOIN {stat} s ON p.path = s.path AND p.size = s.size "
                  f"AND p.mtime_ns = s.mtime_ns") if prev else None
        parts = [q for q in (parsed, reused) if q]
        union = " UNION ALL ".join(f"({q})" for q in parts) if parts else \
            "SELECT * FROM (SELECT NULL::VARCHAR path) WHERE false"
        tmp = index_path.with_name(f".{index_path.name}.tmp{os.getpid()}")
        index_path.parent.mkdir(parents=True, exist_ok=True)
        # a file that does not parse is attributed to its folder's study when exactly one study lives there
        con.execute(f"""
            COPY (
              WITH f AS ({union}),
              d AS (SELECT regexp_replace(path, '/[^/]*$', '') AS dir, min(study_key) AS k,
                           count(DISTINCT study_key) AS n FROM f WHERE parsed GROUP BY 1)
              SELECT f.* REPLACE (CASE WHEN f.parsed = false AND d.n = 1 THEN d.k ELSE f.study_key END
                                  AS study_key)
              FROM f LEFT JOIN d ON d.dir = regexp_replace(f.path, '/[^/]*$', '')
              ORDER BY study_key NULLS LAST, path
            ) TO {_q(tmp)} (FORMAT parquet, ROW_GROUP_SIZE 20000)""")
        n = con.execute(f"SELECT COUNT(*) FROM read_parquet({_q(tmp)})").fetchone()[0]
        con.close()
        os.replace(tmp, index_path)
        return n
    finally:
        shutil.rmtree(work, ignore_errors=True)
