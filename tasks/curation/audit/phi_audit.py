"""PHI audit: search everything outside the restricted zone for the restricted zone's identifiers.

:func:`audit` tokenises every research-zone file (DICOM elements, NIfTI header fields and
extensions, PNG text chunks, Parquet/DuckDB columns, JSON artifacts), the ledger, Prefect's
database and result storage, and log files, and looks the tokens up in the
:class:`~tasks.curation.audit.identifiers.Identifiers` index (first token -> phrases) built by
:func:`~tasks.curation.audit.identifiers.collect_identifiers`. Numbers, dates and UIDs therefore
only match as whole tokens: an MRN inside the 39-digit decimal of a remapped ``2.25.`` UID is not
a hit, nor is a UID that is a prefix of a longer one. The report names where (file, table,
column, tag) and which kind, never the value. See docs/phi-audit.md.
"""
from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mrifoundry.tasks.curation.audit.identifiers import Identifiers, collect_identifiers
from mrifoundry.tasks.curation.audit.scanners import scanner

__all__ = ["AuditReport", "Hit", "Identifiers", "PhiLeakError", "audit", "audit_output", "collect_identifiers"]


@dataclass(frozen=True)
class Hit:
    """One identifier occurrence: ``place`` (file or database), ``location`` inside it, ``kind``."""

    place: str
    location: str
    kind: str


class PhiLeakError(Exception):
    """Identifiers of the restricted zone were found outside it. ``report`` names where (the
    Markdown report at ``report_path`` when one was written; ``quarantine`` says what was moved to
    restricted/quarantine/); fix the stage that wrote the place (or delete it) and audit again.
    The message holds counts and the report path only: no value and no place."""

    def __init__(self, report: "AuditReport", report_path: Path | None = None, quarantine=None):
        self.report, self.report_path, self.quarantine = report, report_path, quarantine
        places = {h.place for h in report.hits} | {p for p, _ in report.errors}
        msg = (f"PHI audit failed: {len(report.hits)} hit(s) in {len(places)} place(s), "
               f"{len(report.errors)} unreadable place(s)")
        if quarantine is not None:
            msg += (f"; {len(quarantine.exams)} exam(s) quarantined, {len(quarantine.moved)} research path(s) "
                    f"moved to restricted/quarantine/, {len(quarantine.not_moved)} place(s) not movable")
            if quarantine.after is not None:
                msg += f"; research zone after quarantine: {len(quarantine.after.hits)} hit(s)"
        msg += f"; report: {report_path}" if report_path else "; see the report (mrifoundry phi-audit)"
        super().__init__(msg)

    def __reduce__(self):
        # pickled (Prefect, process pools) with its report, which pickles without its identifiers
        return _restore_leak_error, (str(self), self.report, self.report_path, self.quarantine)


def _restore_leak_error(message: str, report, report_path, quarantine) -> "PhiLeakError":
    err = PhiLeakError.__new__(PhiLeakError)
    Exception.__init__(err, message)
    err.report, err.report_path, err.quarantine = report, report_path, quarantine
    return err


@dataclass
class AuditReport:
    hits: list[Hit] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)   # (place, exception type): not audited
    scanned: Counter = field(default_factory=Counter)              # kind of place -> count
    identifiers: dict[str, int] = field(default_factory=dict)      # kind -> number of phrases
    unreadable_sources: int = 0                                    # source files skipped (not DICOM)
    seconds: float = 0.0
    # the identifiers searched (for the quarantine's row scan and its re-audit); never printed
    identifier_index: Identifiers | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """No hit and every place could be read."""
        return not self.hits and not self.errors

    def __getstate__(self) -> dict:
        # the identifier index holds the restricted zone's values: it never leaves this process
        return {**self.__dict__, "identifier_index": None}

    def raise_if_leaks(self) -> "AuditReport":
        """Raises: PhiLeakError when not :attr:`ok`."""
        if not self.ok:
            raise PhiLeakError(self)
        return self

    def to_markdown(self) -> str:
        """The report as Markdown: places, locations and kinds; no identifier values."""
        lines = ["# PHI audit", "", f"**{'PASS' if self.ok else 'FAIL'}**: {len(self.hits)} hit(s), "
                 f"{len(self.errors)} unreadable place(s), {self.seconds:.1f} s.", "",
                 "Identifiers searched: " + ", ".join(f"{k} {n}" for k, n in sorted(self.identifiers.items())),
                 "", f"Source files skipped as unreadable (not DICOM): {self.unreadable_sources}.",
                 "", "Places scanned: " + ", ".join(f"{k} {n}" for k, n in sorted(self.scanned.items())), ""]
        if self.hits:
            lines += ["| place | location | kind |", "|---|---|---|"]
            lines += [f"| {h.place} | {h.location} | {h.kind} |" for h in sorted(set(self.hits), key=_hit_key)]
        if self.errors:
            lines += ["", "| unreadable place | error |", "|---|---|"] + [f"| {p} | {e} |" for p, e in self.errors]
        return "\n".join(lines) + "\n"


def _hit_key(h: Hit) -> tuple:
    return h.place, h.location, h.kind


# --------------------------------------------------------------------------- audit
_SIDE_FILES = ("-wal", "-shm", "-journal", ".wal")   # SQLite/DuckDB side files: read through their database


def _walk(roots: Iterable[Path], on_error: Callable[[OSError], None]) -> Iterator[Path]:
    """Every regular file under ``roots`` once, each folder's files sorted, streamed: a Duke-size
    output has ≈ 14 M files, which as a list of paths would take gigabytes. A root inside one
    walked before is skipped; a root holding one walked before skips that subtree. A folder that
    cannot be listed goes to ``on_error`` (reported, never skipped silently)."""
    done: list[Path] = []
    for root in map(Path, roots):
        if any(root == d or root.is_relative_to(d) for d in done):
            continue
        if root.is_file():
            if not root.name.endswith(_SIDE_FILES):
                yield root
        elif root.is_dir():
            for folder, subdirs, names in os.walk(root, onerror=on_error):
                subdirs[:] = sorted(d for d in subdirs if Path(folder, d) not in done)
                for name in sorted(names):
                    path = Path(folder, name)
                    if not name.endswith(_SIDE_FILES) and path.is_file():   # no FIFO, socket or dead link
                        yield path
        done.append(root)


def _place(path: Path, out: Path, ids: Identifiers) -> tuple[str, set[str]]:
    """Display path (relative to ``out`` when inside it) with identifying components redacted."""
    try:
        rel = path.relative_to(out)
    except ValueError:
        rel = path
    parts, kinds = [], set()
    for comp in rel.parts:
        found = ids.find(comp)
        kinds |= found
        parts.append("<redacted>" if found else comp)
    return "/".join(parts).replace("//", "/"), kinds


_RAW_LOCATIONS = {"raw bytes", "header bytes", "extension bytes"}


def _scan_file(path: Path, out: Path, ids: Identifiers, rep: AuditReport) -> None:
    place, name_kinds = _place(path, out, ids)
    rep.hits += [Hit(place, "file name", k) for k in sorted(name_kinds)]
    kind, scan = scanner(path)
    rep.scanned[kind] += 1
    found: list[Hit] = []
    try:
        for location, data in scan(path, ids):
            found += [Hit(place, location, k) for k in sorted(ids.find(data))]
    except Exception as e:  # noqa: BLE001 - an unreadable place is reported, never skipped silently
        rep.errors.append((place, type(e).__name__))
    # a byte-level location only adds a hit that no parsed location explains (e.g. a DICOM preamble)
    parsed = {h.kind for h in found if h.location not in _RAW_LOCATIONS}
    rep.hits += [h for h in found if h.location not in _RAW_LOCATIONS or h.kind not in parsed]


#: below this many files the audit scans in its own process (a spawned worker costs ≈ 1 s of imports)
PARALLEL_MIN_FILES = 2000
#: files per chunk a worker process scans; at most 2 chunks per worker are in flight
CHUNK_FILES = 500
_CHILD_IDS: Identifiers | None = None


def _child_init(ids: Identifiers) -> None:
    global _CHILD_IDS
    _CHILD_IDS = ids


def _scan_chunk(paths: list[Path], out: Path) -> AuditReport:
    """A worker's share: its report (places and kinds only; ``__getstate__`` drops the index)."""
    rep = AuditReport()
    for path in paths:
        _scan_file(path, out, _CHILD_IDS, rep)
    return rep


def _scan_in_processes(paths: Iterable[Path], out: Path, ids: Identifiers, rep: AuditReport, workers: int) -> None:
    """Scan ``paths`` in ``workers`` spawned processes, chunk by chunk as the walk yields them
    (2 chunks per worker in flight), merged into ``rep`` in path order.

    Spawned, not forked: the caller may be a multi-threaded flow run holding DuckDB or SQLite
    handles. The identifiers go to each child once, over its pipe, and stay in its memory; only
    places and kinds come back (the same as a serial scan reports)."""
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    def merge(part: AuditReport) -> None:
        rep.hits += part.hits
        rep.errors += part.errors
        rep.scanned.update(part.scanned)

    pending: deque = deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=_child_init, initargs=(ids,)) as pool:
        for chunk in _chunks(paths, CHUNK_FILES):
            if len(pending) >= 2 * workers:
                merge(pending.popleft().result())
            pending.append(pool.submit(_scan_chunk, chunk, out))
        while pending:
            merge(pending.popleft().result())


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def audit(out: Path, identifiers: Identifiers, extra_paths: Iterable[Path] = (),
          prefect_db: Path | None = None, log_dirs: Iterable[Path] = (),
          prefect_storage: Path | None = None, workers: int = 1) -> AuditReport:
    """Search every place outside ``out/restricted`` for ``identifiers``.

    Places: every file under ``out/research`` (by type: DICOM elements incl. sequences, private
    tags and file meta; NIfTI header fields and extensions; PNG text/eXIf chunks and bytes;
    Parquet/DuckDB columns; JSON values and keys; anything else as bytes) and its file names,
    ``out/state`` (the ledger), ``prefect_db`` (every table and column, via sqlite3),
    ``prefect_storage`` (default ``<prefect_db folder>/storage``), ``log_dirs`` and ``extra_paths``.
    ``workers`` > 1 scans in that many processes once there are ``PARALLEL_MIN_FILES`` files.

    Returns:
        The report; call :meth:`AuditReport.raise_if_leaks` to fail loudly.
    Raises:
        FileNotFoundError: ``out/research`` does not exist.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if not (out / "research").is_dir():
        raise FileNotFoundError(f"{out / 'research'} not found: nothing to audit")
    rep = AuditReport(identifiers=dict(identifiers.kinds()), unreadable_sources=identifiers.unreadable_sources,
                      identifier_index=identifiers)
    roots = [out / "research", out / "state", *map(Path, log_dirs), *map(Path, extra_paths)]
    if prefect_db is not None:
        prefect_db = Path(prefect_db)
        roots.append(prefect_db)
        storage = Path(prefect_storage) if prefect_storage else prefect_db.parent / "storage"
        roots.append(storage)
    def unlisted(e: OSError) -> None:
        rep.errors.append((_place(Path(e.filename or "?"), out, identifiers)[0], type(e).__name__))
    walk = _walk(roots, unlisted)
    first = list(itertools.islice(walk, PARALLEL_MIN_FILES))   # enough files to pay for worker processes?
    if workers > 1 and len(first) == PARALLEL_MIN_FILES:
        _scan_in_processes(itertools.chain(first, walk), out, identifiers, rep, workers)
    else:
        for path in itertools.chain(first, walk):
            _scan_file(path, out, identifiers, rep)
    rep.hits = sorted(set(rep.hits), key=_hit_key)
    rep.seconds = time.perf_counter() - t0
    return rep


def audit_output(out: Path, reports_export: Path | None = None, *, prefect_home: Path | None = None,
                 log_dirs: Iterable[Path] | None = None, extra_paths: Iterable[Path] = (),
                 workers: int = 1) -> AuditReport:
    """:func:`collect_identifiers` + :func:`audit` with this deployment's Prefect database and logs
    (``$PREFECT_HOME/prefect.db``, ``$PREFECT_LOCAL_STORAGE_PATH``, ``$MRIFOUNDRY_HOME/logs``).

    Raises:
        FileNotFoundError: ``out/restricted`` or ``out/research`` does not exist.
    """
    ids = collect_identifiers(out, reports_export, workers=workers)
    home = prefect_home or (Path(os.environ["PREFECT_HOME"]) if os.environ.get("PREFECT_HOME") else None)
    db = home / "prefect.db" if home and (home / "prefect.db").exists() else None
    storage = os.environ.get("PREFECT_LOCAL_STORAGE_PATH")
    if log_dirs is None:
        mh = os.environ.get("MRIFOUNDRY_HOME")
        log_dirs = [Path(mh) / "logs"] if mh else []
    return audit(out, ids, extra_paths=extra_paths, prefect_db=db, log_dirs=log_dirs,
                 prefect_storage=Path(storage) if storage and prefect_home is None else None, workers=workers)
