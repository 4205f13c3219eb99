"""Shared checks of curation outputs (used by the end-to-end tests)."""
from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import duckdb

UID_RE = re.compile(rb"[0-9]+(?:\.[0-9]+){3,}")


def copy_exams(manifest: dict, sample: Path, dest: Path, pred) -> list[dict]:
    """Copy the study folders of the manifest exams matching ``pred`` into a new archive."""
    exams = [e for e in manifest["exams"] if e.get("in_archive") and e.get("study_dir") and pred(e)]
    for e in exams:
        src = sample / "archive" / e["study_dir"]
        shutil.copytree(src, dest / e["study_dir"], dirs_exist_ok=True)
    return exams


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


def _file_texts(path: Path):
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if path.suffix in (".parquet",):
        con = duckdb.connect()
        rows = con.execute(f"SELECT * FROM read_parquet('{path}')").fetchall()
        con.close()
        data = json.dumps(rows, default=str).encode()
    if path.suffix == ".duckdb":
        con = duckdb.connect(str(path), read_only=True)
        try:
            views = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
            dumped = [json.dumps(con.execute(f"SELECT * FROM {v}").fetchall(), default=str) for v in views]
        finally:
            con.close()
        data = data + "".join(dumped).encode()
    return data


def find_phi(roots: list[Path], manifest: dict) -> list[tuple[str, str]]:
    """Every (file, kind) where a PHI value of the manifest occurs, exactly or normalised."""
    texts, uids = phi_values(manifest)
    hits = []
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for p in files:
            data = _file_texts(p)
            low = data.lower()
            for t in texts:
                if t in low:
                    hits.append((str(p), "text"))
                    break
            if any(u in uids for u in UID_RE.findall(data)):
                hits.append((str(p), "uid"))
    return hits
