"""Per-format readers for the PHI audit (:mod:`tasks.curation.audit.phi_audit`).

Each reader turns one file into ``(location, data)`` chunks: the location names where inside
the file (a DICOM tag path, a NIfTI header field or extension, a PNG chunk, a table column, a
JSON path, a line) and never contains a value that is itself an identifier; data is text or
bytes for the tokeniser.
"""
from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pyarrow.parquet as pq
import pydicom
from pydicom.dataset import Dataset

Chunks = Iterator[tuple[str, bytes | str]]
ROW_SEP = "\x1e"   # joins the values of a column: a token of its own (the tokeniser in tasks/curation/audit/identifiers.py)


class Finder(Protocol):
    def find(self, data: bytes | str) -> set[str]: ...


_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def _dicom_chunks(path: Path, ids: Finder) -> Chunks:
    """Every element (sequences, private tags, file meta, elements after the pixels) and the
    raw bytes around the pixel data (preamble, anything the parser skips). The pixel values
    themselves are not tokenised: they are numbers, their bytes only give chance digit runs,
    and tokenising them was most of the audit's time on real data (docs/phi-audit.md)."""
    ds = pydicom.dcmread(path, force=True, defer_size=4096)   # pixel data deferred: not read
    span = _pixel_span(path, ds)
    with path.open("rb") as fh:
        if span is None:
            yield "raw bytes", fh.read()
        else:
            yield "raw bytes", fh.read(span[0])
            if span[1] is not None:
                fh.seek(span[1])
                yield "raw bytes", fh.read()   # after the pixels (trailing padding, junk)
    if getattr(ds, "file_meta", None) is not None:
        yield from _element_chunks(ds.file_meta, "")
    yield from _element_chunks(ds, "")


def _pixel_span(path: Path, ds: Dataset) -> tuple[int, int | None] | None:
    """(start of the pixel data element, end of its value or None if undefined length)."""
    for tag in _PIXEL_TAGS:
        elem = ds._dict.get(tag)
        value_tell = getattr(elem, "file_tell", None) or getattr(elem, "value_tell", None)
        if not value_tell:
            continue
        implicit, little = getattr(ds, "original_encoding", None) or (False, True)
        with path.open("rb") as fh:
            fh.seek(value_tell - 4)
            length = struct.unpack("<I" if little is not False else ">I", fh.read(4))[0]
        # implicit VR: tag 4 + length 4; explicit OB/OW: tag 4 + VR 2 + reserved 2 + length 4
        start = max(0, value_tell - (8 if implicit else 12))
        return start, None if length == 0xFFFFFFFF else value_tell + length
    return None


def _element_chunks(ds: Dataset, prefix: str) -> Chunks:
    for elem in ds:
        if int(elem.tag) in _PIXEL_TAGS and not prefix:
            continue   # the pixel values (see _dicom_chunks)
        where = f"{prefix}({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                yield from _element_chunks(item, f"{where}[{i}].")
        elif isinstance(elem.value, bytes):
            yield where, elem.value
        else:
            yield where, str(elem.value)


def _nifti_chunks(path: Path, ids: Finder) -> Chunks:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        head = fh.read(540)
        two = struct.unpack("<i", head[:4])[0] in (540, 0x1C020000)
        end = ">" if struct.unpack("<i", head[:4])[0] in (0x5C010000, 0x1C020000) else "<"
        if two:   # NIfTI-2: int64 vox_offset
            vox = struct.unpack(end + "q", head[168:176])[0]
            fields = {"descrip": (240, 80), "aux_file": (320, 24), "intent_name": (508, 16)}
        else:
            vox = int(struct.unpack(end + "f", head[108:112])[0])
            fields = {"db_name": (14, 18), "descrip": (148, 80), "aux_file": (228, 24), "intent_name": (328, 16)}
        hdr_size = 540 if two else 348
        head += fh.read(max(0, vox - len(head)))
    for name, (off, n) in fields.items():
        yield f"header {name}", head[off:off + n]
    yield "header bytes", head[:hdr_size]
    pos, i = hdr_size + 4, 0
    if len(head) > hdr_size and head[hdr_size] != 0:
        while pos + 8 <= len(head):
            esize, ecode = struct.unpack(end + "ii", head[pos:pos + 8])
            if esize < 8:
                break
            yield f"extension {i} (ecode {ecode})", head[pos + 8:pos + esize]
            pos, i = pos + esize, i + 1
    if pos < len(head):
        yield "extension bytes", head[pos:]


def _png_chunks(path: Path, ids: Finder) -> Chunks:
    """Text, eXIf and every other ancillary chunk, parsed; the raw bytes of all but the
    compressed image data (IDAT holds deflate output: tokenising it finds only chance runs)."""
    data = path.read_bytes()
    raw, pos = [data[:8]], 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        raw.append(data[pos:pos + 8] if ctype == b"IDAT" else data[pos:pos + 12 + length])
        pos += 12 + length
    raw.append(data[pos:])
    yield "raw bytes", b"".join(raw)
    pos, n = 8, Counter()
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        name = ctype.decode("latin-1")
        n[name] += 1
        where = f"{name} chunk {n[name]}"
        if ctype == b"zTXt":
            key, _, rest = body.partition(b"\0")
            yield where, key + b" " + _inflate(rest[1:])
        elif ctype == b"iTXt":
            key, _, rest = body.partition(b"\0")
            flag, text = rest[:1], rest[2:]
            lang, _, text = text.partition(b"\0")
            tkey, _, text = text.partition(b"\0")
            yield where, b" ".join([key, lang, tkey, _inflate(text) if flag == b"\1" else text])
        elif ctype not in (b"IHDR", b"IDAT", b"IEND", b"PLTE"):
            yield where, body   # tEXt, eXIf and any other ancillary chunk


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)
    except zlib.error:
        return data


def _json_chunks(path: Path, ids: Finder) -> Chunks:
    def walk(v, where: str) -> Chunks:
        if isinstance(v, dict):
            for i, (k, x) in enumerate(v.items()):
                yield f"{where} key #{i}", k   # a key is named by position: it may be the leak
                yield from walk(x, f"{where}.{k}" if not ids.find(k) else f"{where}.#{i}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                yield from walk(x, f"{where}[{i}]")
        elif v is not None:
            yield where, str(v)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        yield from _text_chunks(path, ids)
        return
    yield from walk(doc, "$")


def _text_chunks(path: Path, ids: Finder) -> Chunks:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for i, line in enumerate(fh, 1):
            yield f"line {i}", line


#: rows per batch when a table is scanned: memory stays bounded whatever the catalog's size
#: (a Duke-110K slices table is ≈ 7 M rows; whole columns as Python strings were gigabytes)
BATCH_ROWS = 65_536


def _joined(values) -> str:
    return ROW_SEP.join(str(v) for v in values if v is not None)


def _parquet_chunks(path: Path, ids: Finder) -> Chunks:
    pf = pq.ParquetFile(path)
    meta = pf.schema_arrow.metadata or {}
    yield "schema metadata", b" ".join(k + b" " + v for k, v in meta.items())
    for name in pf.schema_arrow.names:
        yield f"column {name} (name)", name
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[name]):
            yield f"column {name}", _joined(batch.column(0).to_pylist())


#: DuckDB memory for scanning a database's views (joins and window functions over whole tables
#: spill to a temp folder beyond it, so a Duke-size catalog scans in bounded memory)
DUCKDB_MEMORY = "512MB"


def _duckdb_chunks(path: Path, ids: Finder) -> Chunks:
    import tempfile

    from mrifoundry.duck import quiet_connect
    spill = tempfile.mkdtemp(prefix="mrifoundry-audit-")
    con = quiet_connect(str(path), read_only=True, config={"memory_limit": DUCKDB_MEMORY, "temp_directory": spill})
    try:
        rels = con.execute("SELECT table_name FROM duckdb_tables() UNION ALL "
                           "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        for (rel,) in rels:
            # a streamed reader: execute().fetchmany() would materialise the whole view first
            reader = con.sql(f'SELECT * FROM "{rel}"').fetch_record_batch(BATCH_ROWS)
            for batch in reader:
                for col, values in zip(batch.schema.names, batch.columns):
                    yield f"{rel}.{col}", _joined(values.to_pylist())
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


#: Prefect's own catalogue of block types and their JSON schemas, written by the server at start-up
#: from Prefect's code (its examples name a user "johndoe"): no run writes there. Block *documents*
#: (values a user stores) are scanned.
PREFECT_STATIC_TABLES = frozenset({"block_schema", "block_type", "block_schema_reference", "alembic_version"})


def _column_hit(cur, ids: Finder) -> bool:
    """Whether any value of the one-column cursor holds an identifier, read in batches."""
    while rows := cur.fetchmany(BATCH_ROWS):
        blob = ROW_SEP.encode().join(v if isinstance(v, bytes) else str(v).encode("utf-8", "replace")
                                     for (v,) in rows if v is not None)
        if ids.find(blob):
            return True
    return False


def _sqlite_chunks(path: Path, ids: Finder) -> Chunks:
    """Every column of every table; a column with a hit is re-scanned row by row to name the row."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            if t in PREFECT_STATIC_TABLES:
                continue
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{t}")')]
            key = "id" if "id" in cols else "rowid"
            for c in cols:
                if not _column_hit(con.execute(f'SELECT "{c}" FROM "{t}"'), ids):
                    continue
                for rid, v in con.execute(f'SELECT {key}, "{c}" FROM "{t}" WHERE "{c}" IS NOT NULL'):
                    yield f"table {t} column {c} {key}={rid}", v if isinstance(v, bytes) else str(v)
    finally:
        con.close()


def _npy_chunks(path: Path, ids: Finder) -> Chunks:
    """The header dict; the data as bytes unless it is floating point. Float arrays (feature
    grids, cached volumes) hold numbers, not text: scanning their bytes only finds chance
    digit/letter runs (float16 values in [0, 1] put ASCII '0'…'<' in every high byte)."""
    import numpy as np
    with path.open("rb") as fh:
        version = np.lib.format.read_magic(fh)
        start = fh.tell()
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        _, _, dtype = read(fh)
        end = fh.tell()
        fh.seek(start)
        yield "npy header", fh.read(end - start)
        if dtype.kind not in "fc" or dtype.fields is not None:
            yield "raw bytes", fh.read()


def _raw_chunks(path: Path, ids: Finder) -> Chunks:
    yield "raw bytes", path.read_bytes()


def scanner(path: Path) -> tuple[str, Callable[[Path, Finder], Chunks]]:
    """(kind of place, chunk function) for ``path``, by suffix; DICOM without suffix by its magic."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti", _nifti_chunks
    by_suffix = {".dcm": ("dicom", _dicom_chunks), ".png": ("png", _png_chunks), ".json": ("json", _json_chunks),
                 ".parquet": ("parquet", _parquet_chunks),
                 ".npy": ("npy", _npy_chunks), ".duckdb": ("duckdb", _duckdb_chunks),
                 ".sqlite": ("sqlite", _sqlite_chunks), ".db": ("sqlite", _sqlite_chunks)}
    if path.suffix.lower() in by_suffix:
        return by_suffix[path.suffix.lower()]
    if path.suffix.lower() in (".md", ".txt", ".log", ".csv", ".tsv", ".html", ".yaml", ".yml", ".gz"):
        return "text", _text_chunks
    with path.open("rb") as fh:
        if fh.read(132)[128:] == b"DICM":
            return "dicom", _dicom_chunks
    return "other", _raw_chunks
