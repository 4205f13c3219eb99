"""The folder archive's header index, built by streaming: bounded memory at any archive size.

Pass 1 walks the folder and writes (path, size, mtime) in chunks; DuckDB joins that with the
previous index to find new or changed files; pass 2 parses only those, in chunks, in a
process pool; a final SQL statement attributes unparseable files to the study of their
folder and writes the index sorted by study key, so a lookup by key reads one row group.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import signal
import threading
import shutil
import stat as _stat
import tarfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes, unquote_to_bytes

import pyarrow as pa
import pyarrow.parquet as pq
import pydicom

from catalog.store import write_parquet_atomic as write_parquet
from mrifoundry.duck import quiet_connect
from mrifoundry.errors import is_disk_full

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
CONTAINER_SUFFIXES = (".zip", ".gz", ".tgz", ".tar")
SOURCES_SCHEMA = pa.schema([
    ("path", pa.string()), ("kind", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("message", pa.string()), ("n_members", pa.int64()),
])


@dataclass(frozen=True)
class WalkLimits:
    """What the archive walk opens, and how much a container may expand (docs/bad-input.md)."""
    follow_symlinks: bool = False                # symlinks to outside the archive are refused unless set
    max_file_bytes: int = 8 << 30                # a larger file is not read (file_too_large)
    max_expanded_bytes: int = 64 << 30           # one container's whole expansion, nested members included
    max_ratio: float = 100.0                     # expanded bytes per compressed byte (zip bombs) …
    ratio_slack_bytes: int = 32 << 20            # … once past this much (tiny archives compress well)
    max_depth: int = 3                           # containers inside containers
    max_members: int = 200_000


class ContainerRefused(Exception):
    """The container's expansion broke the budget; the message names the rule, never a member name."""


# -- bytes-safe paths ------------------------------------------------------------------
# A file name is bytes on POSIX: Latin-1 / Shift-JIS names from Windows exports decode to lone
# surrogates, which Arrow and DuckDB cannot store. Such a path is stored percent-encoded behind a
# prefix no absolute path has; every reader goes through decode_path().
_ENC = "fsb:"


def encode_path(path: str) -> str:
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return _ENC + quote_from_bytes(os.fsencode(path), safe="/")


def decode_path(stored: str) -> str:
    return os.fsdecode(unquote_to_bytes(stored[len(_ENC):])) if stored.startswith(_ENC) else stored


def looks_like_dicom(path: str) -> bool:
    """Cheap sniff before any parse: a Part-10 preamble, or a raw dataset whose first tag is a
    plausible group (ACR-NEMA / implicit VR files). Rejects zero-filled and text files in
    constant time, however large (a forced pydicom parse of 256 MiB of zeros takes minutes)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group_le, group_be = int.from_bytes(head[0:2], "little"), int.from_bytes(head[0:2], "big")
    # the first element of a raw dataset is in one of the low, even groups (0008,0005) …
    return any(0x0002 <= g <= 0x0030 and g % 2 == 0 for g in (group_le, group_be))


# -- containers ------------------------------------------------------------------------
class _Budget:
    def __init__(self, compressed: int, limits: WalkLimits):
        self.limits, self.compressed, self.written, self.members = limits, max(compressed, 1), 0, 0

    def add(self, n: int) -> None:
        self.written += n
        lim = self.limits
        if self.written > lim.max_expanded_bytes:
            raise ContainerRefused(f"expands past {lim.max_expanded_bytes >> 20} MiB")
        if self.written > lim.ratio_slack_bytes and self.written > lim.max_ratio * self.compressed:
            raise ContainerRefused(f"expands more than {lim.max_ratio:g}x its size (a zip bomb?)")


def _safe_member_name(i: int, name: str) -> str:
    """A flat, short, printable file name for a member: nothing lands outside the folder and no
    member name (254 characters, control characters, '..') fails the container."""
    base = os.path.basename(name.replace("\\", "/").rstrip("/")) or "member"
    base = "".join(c if c.isprintable() and c not in "/\\" else "_" for c in base).lstrip(".") or "member"
    raw = base.encode("utf-8", "surrogateescape")
    if len(raw) > 80:   # keep the suffix (.dcm, .zip) that says what the member is
        stem, ext = os.path.splitext(base)
        base = stem.encode("utf-8", "surrogateescape")[:60].decode("utf-8", "ignore") + "~" + ext[-12:]
    return f"{i:05d}_{encode_path(base).replace(_ENC, '')}"


def _copy_member(src, out_path: Path, budget: _Budget) -> bool:
    """Stream one member to ``out_path`` under the budget. False (nothing kept) for a blank member:
    empty or only zero bytes, which no DICOM is."""
    nonblank = False
    with open(out_path, "wb") as out:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            budget.add(len(chunk))
            nonblank = nonblank or chunk.count(0) != len(chunk)
            out.write(chunk)
    if not nonblank:
        out_path.unlink()
    return nonblank


def _members(path: str):
    """(name, opener) of a zip, tar (any compression) or gzip file. Raises when it is none."""
    if zipfile.is_zipfile(path):
        zf = zipfile.ZipFile(path)
        return [(m.filename, lambda m=m: zf.open(m)) for m in zf.infolist() if not m.is_dir()], zf
    if tarfile.is_tarfile(path):
        tf = tarfile.open(path)
        return [(m.name, lambda m=m: tf.extractfile(m)) for m in tf.getmembers() if m.isfile()], tf
    with gzip.open(path, "rb") as probe:
        probe.read(1)   # raises unless it is a gzip stream
    name = os.path.basename(path)
    return [(name[:-3] if name.lower().endswith(".gz") else name, lambda: gzip.open(path, "rb"))], None


def _extract(path: str, dest: Path, budget: _Budget, depth: int) -> None:
    if depth > budget.limits.max_depth:
        raise ContainerRefused(f"containers nested deeper than {budget.limits.max_depth}")
    members, handle = _members(path)
    try:
        for i, (name, opener) in enumerate(members):
            budget.members += 1
            if budget.members > budget.limits.max_members:
                raise ContainerRefused(f"more than {budget.limits.max_members} members")
            out = dest / _safe_member_name(i, name)
            with opener() as src:
                if not _copy_member(src, out, budget):
                    continue
            if out.name.lower().endswith(CONTAINER_SUFFIXES) and not looks_like_dicom(str(out)):
                sub = dest / f"{out.name}.d"
                sub.mkdir()
                try:
                    _extract(str(out), sub, budget, depth + 1)
                except ContainerRefused:
                    raise
                except Exception:  # noqa: BLE001 - not a container after all: keep the member as a file
                    shutil.rmtree(sub, ignore_errors=True)
                    continue
                out.unlink()
    finally:
        if handle is not None:
            handle.close()


def expand_container(path: str, size: int, mtime_ns: int, root: Path,
                     limits: WalkLimits = WalkLimits()) -> tuple[list[str] | None, str, str | None, str]:
    """Expand a zip, tar (any compression) or gzip file once under ``root/<key>/`` (restricted
    zone; key = hash of path, size and mtime, so a changed container is expanded anew), within one
    budget for the container and everything nested in it.

    Returns:
        (member paths or None, status, reason, message): ``done`` with the members; ``rejected``
        ``container_refused`` (budget), ``container_empty`` (no non-blank member) or
        ``container_unreadable`` (does not open as a container; members None).
    """
    key = hashlib.sha256(f"{path}|{size}|{mtime_ns}".encode("utf-8", "surrogateescape")).hexdigest()[:20]
    dest = root / key
    if not dest.is_dir():
        tmp = root / f".{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _extract(path, tmp, _Budget(size, limits), 1)
        except ContainerRefused as e:
            shutil.rmtree(tmp, ignore_errors=True)
            return None, "rejected", "container_refused", str(e)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(e):
                raise
            return None, "rejected", "container_unreadable", f"{type(e).__name__} while expanding"
        except Exception as e:  # noqa: BLE001 - corrupt, or not a container at all
            shutil.rmtree(tmp, ignore_errors=True)
            return None, "rejected", "container_unreadable", f"does not open as zip, tar or gzip ({type(e).__name__})"
        os.replace(tmp, dest)
    members = sorted(str(p) for p in dest.rglob("*") if p.is_file())
    if not members:
        return [], "rejected", "container_empty", "no member with content (empty, or only zero bytes)"
    return members, "done", None, f"expanded {len(members)} file(s)"


#: a header that takes longer than this to parse (a crafted file, a stalled mount) is not DICOM here
READ_SECONDS = 30.0


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in the block after ``seconds`` (SIGALRM: the index's worker processes and
    a main thread; elsewhere — a Prefect worker thread — no limit can be set and none is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _alarm(signum, frame):
        raise TimeoutError("header read took too long")
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


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
            f"SELECT path FROM read_parquet({_q(index_path)}) WHERE parsed = false AND study_key IS NULL "
            "ORDER BY path").fetchall()]
    finally:
        con.close()


def _read_headers(paths: list[str]) -> list[dict]:
    return [read_header(p) for p in paths]


def _q(p: Path | str) -> str:
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
        stat = f"read_parquet({_q(work / 'stat' / '*.parquet')})"
        # an index written before the folder column existed is rebuilt from scratch
        prev = (f"read_parquet({_q(index_path)})" if index_path.exists()
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
        parsed_glob = work / "parsed" / "*.parquet"
        parsed = (f"SELECT s.path, s.size, s.mtime_ns, s.folder, r.* EXCLUDE (path) FROM read_parquet({_q(parsed_glob)}) r "
                  f"JOIN {stat} s USING (path)") if list((work / "parsed").glob("*.parquet")) else None
        reused = (f"SELECT p.* FROM {prev} p JOIN {stat} s ON p.path = s.path AND p.size = s.size "
                  f"AND p.mtime_ns = s.mtime_ns") if prev else None
        parts = [q for q in (parsed, reused) if q]
        empty = ", ".join(f"NULL::{'BIGINT' if f.type == pa.int64() else 'BOOLEAN' if f.type == pa.bool_() else 'VARCHAR'}"
                          f" AS {f.name}" for f in INDEX_SCHEMA)
        union = " UNION ALL ".join(f"({q})" for q in parts) if parts else f"SELECT {empty} WHERE false"
        tmp = index_path.with_name(f".{index_path.name}.tmp{os.getpid()}")
        index_path.parent.mkdir(parents=True, exist_ok=True)
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
            ) TO {_q(tmp)} (FORMAT parquet, ROW_GROUP_SIZE 20000)""")
        n = con.execute(f"SELECT COUNT(*) FROM read_parquet({_q(tmp)})").fetchone()[0]
        con.close()
        os.replace(tmp, index_path)
        return n
    finally:
        shutil.rmtree(work, ignore_errors=True)
