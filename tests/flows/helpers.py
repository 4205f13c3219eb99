"""Shared checks of curation outputs (used by the end-to-end tests)."""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import duckdb

def copy_exams(manifest: dict, sample: Path, dest: Path, pred) -> list[dict]:
    """Copy the study folders of the manifest exams matching ``pred`` into a new archive."""
    exams = [e for e in manifest["exams"] if e.get("in_archive") and e.get("study_dir") and pred(e)]
    for e in exams:
        src = sample / "archive" / e["study_dir"]
        shutil.copytree(src, dest / e["study_dir"], dirs_exist_ok=True)
    return exams


def clean_exams(manifest: dict, parts: tuple[str, ...]) -> list[dict]:
    """One defect-free archived exam per body part in ``parts`` (manifest spelling, e.g. BRAIN),
    each of another patient."""
    clean = [e for e in manifest["exams"] if e.get("in_archive") and e.get("study_dir")
             and not any(s.get("defect") for s in e["series"])]
    picked, patients = [], set()
    for part in parts:
        e = next(e for e in clean if e.get("body_part") == part and e["patient_mrn"] not in patients
                 and e not in picked)
        picked.append(e)
        patients.add(e["patient_mrn"])
    return picked


def phi_values(manifest: dict) -> tuple[set[bytes], set[bytes]]:
    """(text values with their normalised variants, UIDs) of the sample's PHI."""
    phi = manifest["phi"]
    texts: set[str] = set()
    for key, values in phi.items():
        if key == "uids":
            continue
        for v in values:
            v = str(v).strip()
            if len(v) < 4:
                continue
            texts.add(v)
            if "^" in v:
                parts = [p for p in v.split("^") if p]
                texts.add(" ".join(parts))
                texts.add(" ".join(reversed(parts)))
                texts.add(", ".join(parts))
            if re.fullmatch(r"\d{8}", v):  # DICOM DA → ISO and US formats
                texts.add(f"{v[:4]}-{v[4:6]}-{v[6:]}")
                texts.add(f"{v[4:6]}/{v[6:]}/{v[:4]}")
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
                texts.add(v.replace("-", ""))
    lower = {t.lower() for t in texts}
    return {t.encode() for t in lower}, {u.encode() for u in phi["uids"]}


def _dump_structured(path: Path) -> bytes:
    """Parquet and DuckDB files are compressed: search their rows as text instead."""
    con = duckdb.connect(str(path), read_only=True) if path.suffix == ".duckdb" else duckdb.connect()
    try:
        if path.suffix == ".parquet":
            rows = [con.execute(f"SELECT * FROM read_parquet('{path}')").fetchall()]
        else:
            views = [r[0] for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
            rows = [con.execute(f"SELECT * FROM {v}").fetchall() for v in views]
    finally:
        con.close()
    return json.dumps(rows, default=str).encode()


def _grep(patterns: set[bytes], root: Path, ignore_case: bool, words: bool = False) -> list[tuple[str, int, bytes]]:
    """(file, byte offset, match) of every pattern under ``root``: GNU grep -F (Aho-Corasick), not a
    Python loop."""
    with tempfile.NamedTemporaryFile("wb", suffix=".pat", delete=False) as fh:
        fh.write(b"\n".join(sorted(patterns)) + b"\n")
        pat = fh.name
    try:
        r = subprocess.run(["grep", "-rHoabF", *(["-i"] if ignore_case else []), *(["-w"] if words else []),
                            "-f", pat, str(root)],
                           capture_output=True)
    finally:
        os.unlink(pat)
    if r.returncode not in (0, 1):
        raise RuntimeError(r.stderr.decode())
    out = []
    for line in r.stdout.splitlines():
        path, offset, match = line.split(b":", 2)
        out.append((path.decode(), int(offset), match))
    return out


def _context(path: str, offset: int, length: int, width: int = 24) -> tuple[bytes, bytes]:
    """The bytes just before and just after a match."""
    with open(path, "rb") as fh:
        fh.seek(max(0, offset - width))
        before = fh.read(min(offset, width))
        fh.seek(offset + length)
        return before, fh.read(width)


def _in_dotted_number(before: bytes, after: bytes) -> bool:
    """A digit run that is one component of a dotted number: a decimal or timestamp fraction
    (``12:00:01.111793``), a version. A 6-digit device serial meets one in every ~10^5 microsecond
    timestamps of Prefect's database by chance — the product's audit has the same rule (a dotted
    number is one token)."""
    return before[-2:-1].isdigit() and before[-1:] == b"." or after[:1] == b"." and after[1:2].isdigit()


def find_phi(roots: list[Path], manifest: dict) -> list[tuple[str, str, bytes]]:
    """Every (file, kind, context) where a PHI value of the manifest occurs, exactly or normalised.

    Compressed files (.gz, .parquet, .duckdb) are expanded to text in a scratch folder first.
    """
    texts, uids = phi_values(manifest)
    hits = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        targets = []
        for i, root in enumerate(roots):
            files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
            for j, p in enumerate(files):
                if p.suffix in (".gz", ".parquet", ".duckdb"):
                    data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else _dump_structured(p)
                    q = scratch / f"{i}_{j}_{p.name}.txt"
                    q.write_bytes(data)
                    targets.append(q)
            if root.is_file() and root.suffix not in (".gz", ".parquet", ".duckdb"):
                targets.append(root)
            elif root.is_dir():
                targets.append(root)
        # numbers (MRNs, accession numbers, dates) only as whole tokens: a 6-digit MRN occurs
        # by chance inside the 39-digit decimal of a remapped 2.25 UID
        numeric = {t for t in texts if re.fullmatch(rb"[0-9./ -]+", t)}
        for t in targets:
            for kind, found in (("text", _grep(texts - numeric, t, ignore_case=True)),
                                ("number", _grep(numeric, t, ignore_case=False, words=True)),
                                ("uid", _grep(uids, t, ignore_case=False, words=True))):
                for f, offset, match in found:
                    before, after = _context(f, offset, len(match))
                    if kind == "number" and _in_dotted_number(before, after):
                        continue
                    hits.append((f, kind, before + b"[" + match + b"]" + after))
    return hits
