"""Curate every real vendor case of :mod:`mrifoundry.vendor_corpus`, convert it with dcm2niix
too, and compare: which series each converts, and our NIfTI against dcm2niix's in world space.

    python -m mrifoundry.vendor_check [--out DIR] [--markdown docs/vendors.md] [--case NAME ...]

The curation is the pipeline's plain stage functions (the ones the Prefect flow wraps) with
default settings, ending with the PHI audit. dcm2niix (PyPI wheel) runs with ``-b y -z n
-f %j``; gzip-compressed inputs are unpacked for it, as it reads no ``.gz``. The world-space
comparison samples dcm2niix's volume (same time point as ours: the middle one) at the
centres of our RAS 1 mm voxels, trilinearly, where both have data, and reports Pearson's r.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mrifoundry import ids
from mrifoundry.vendor_corpus import build, by_name


@dataclass
class SeriesResult:
    series_id: str
    image_set: str
    status: str
    reason: str | None
    nifti: str | None
    shape: str | None


@dataclass
class CaseResult:
    case: str
    audit_ok: bool
    audit_hits: int
    series: list[SeriesResult] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)        # instance/file-level reasons -> count
    dcm2niix: dict[str, tuple[int, ...]] = field(default_factory=dict)   # output stem -> shape
    matches: list[dict] = field(default_factory=list)            # our series vs a dcm2niix output


def curate_case(archive: Path, out: Path, **params) -> CaseResult:
    """The curation stages and the PHI audit on one archive folder (no Prefect); ``params``
    override :class:`mrifoundry.settings.CurateParams` defaults."""
    from catalog.views import connect
    from mrifoundry.settings import CurateParams
    from tasks.curation.pipeline import curate_exam
    from tasks.curation.finalize import finalize_catalog
    from tasks.curation.audit.phi_audit import audit_output
    from tasks.curation.selection.exams import select_exams
    from tasks.curation.workspace import Workspace

    ws = Workspace(out)
    params = CurateParams(**{"archive": str(archive), "reports": None, "out": str(out), "workers": 1, **params})
    for exam_id in select_exams(ws, params).exam_ids:
        curate_exam(ws, params, exam_id)
    finalize_catalog(ws)
    report = audit_output(out, prefect_home=Path(out) / "no-prefect", log_dirs=[])
    con = connect(ws.research)
    try:
        rows = con.execute("SELECT series_id, coalesce(image_set, ''), status, reason, nifti_path, nifti_shape "
                           "FROM series ORDER BY series_id").fetchall()
        dropped = dict(con.execute("SELECT reason, count(*) FROM stage_results WHERE status <> 'done' AND item_kind IN "
                                   "('instance', 'file', 'container', 'symlink', 'folder') GROUP BY 1 ORDER BY 1"
                                   ).fetchall())
    finally:
        con.close()
    return CaseResult(archive.name, report.ok, len(report.hits),
                      [SeriesResult(*r) for r in rows], dropped)


def run_dcm2niix(archive: Path, out: Path) -> dict[str, Path]:
    """dcm2niix on the archive (``.gz`` inputs unpacked first); {output stem: NIfTI path}."""
    import dcm2niix

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        shutil.copytree(archive, src)
        for gz in src.rglob("*.gz"):
            with gzip.open(gz) as fh:
                gz.with_suffix("").write_bytes(fh.read())
            gz.unlink()
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([dcm2niix.bin, "-b", "y", "-ba", "n", "-z", "n", "-f", "%j", "-o", str(out), str(src)],
                       capture_output=True, timeout=600, check=False)
    return {p.name[:-4]: p for p in sorted(out.glob("*.nii"))}


def world_correlation(ours: Path, ref: Path, timepoint: int | None = None) -> tuple[float, int]:
    """Pearson r between our volume and ``ref`` sampled at our voxel centres (where both have
    data), and the number of voxels compared. ``timepoint`` picks ref's volume (default middle)."""
    a = nib.load(ours)
    b = nib.load(ref)
    data_b = np.asarray(b.dataobj, dtype=np.float32)
    if data_b.ndim == 4:
        data_b = data_b[..., data_b.shape[3] // 2 if timepoint is None else timepoint]
    data_b = data_b.reshape(data_b.shape[:3])
    data_a = np.asarray(a.dataobj, dtype=np.float32)
    ijk = np.indices(data_a.shape[:3]).reshape(3, -1)
    world = a.affine[:3, :3] @ ijk + a.affine[:3, 3:4]
    vox = np.linalg.inv(b.affine)[:3, :3] @ world + np.linalg.inv(b.affine)[:3, 3:4]
    inside = np.all((vox >= -0.5) & (vox <= np.array(data_b.shape)[:, None] - 0.5), axis=0)
    sampled = ndimage.map_coordinates(data_b, vox[:, inside], order=1, mode="nearest")
    mine = data_a.reshape(-1)[inside]
    keep = mine != 0   # our voxels outside the acquired slab are 0
    if keep.sum() < 100 or np.std(mine[keep]) == 0 or np.std(sampled[keep]) == 0:
        return float("nan"), int(keep.sum())
    return float(np.corrcoef(mine[keep], sampled[keep])[0, 1]), int(keep.sum())


def _uid_of(stem: str) -> str:
    m = re.match(r"[0-9.]+[0-9]", stem)
    return m.group(0) if m else stem


def check_case(name: str, archive: Path, work: Path) -> CaseResult:
    res = curate_case(archive, work / "out")
    outputs = run_dcm2niix(archive, work / "dcm2niix")
    res.dcm2niix = {stem: tuple(int(s) for s in nib.load(p).shape) for stem, p in outputs.items()}
    from mrifoundry.settings import load_salt
    salt = load_salt(work / "out")   # restricted: this tool runs where the archive is
    ours = {s.series_id: s for s in res.series}
    for stem, path in outputs.items():
        phase = "_ph" in stem[len(_uid_of(stem)):]
        sid = ids.series_id(_uid_of(stem), salt) if salt else None
        if phase and sid:
            sid = ids.series_id(f"{_uid_of(stem)}/phase", salt)
        s = ours.get(sid)
        match = {"dcm2niix": stem, "shape": res.dcm2niix[stem], "series_id": sid,
                 "status": s.status if s else "absent", "reason": s.reason if s else None, "r": None}
        if s and s.status == "ok" and s.nifti:
            r, n = world_correlation(work / "out" / "research" / s.nifti, path)
            match.update(r=round(r, 4), voxels=n)
        res.matches.append(match)
    return res


def markdown(results: list[CaseResult], missing: list[str]) -> str:
    lines = ["| case | vendor | kind | dcm2niix outputs (shape) | ours: series (status / reason) | "
             "dropped files | r vs dcm2niix | PHI audit |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        case = by_name(res.case)
        d2x = "<br>".join(f"{'×'.join(map(str, m['shape']))}" for m in res.matches) or "none"
        mine = "<br>".join(f"{s.status}{' ' + s.image_set if s.image_set else ''}"
                           f"{' ' + (s.shape or '') if s.status == 'ok' else ' / ' + str(s.reason)}"
                           for s in res.series) or "none"
        dropped = ", ".join(f"{k} {v}" for k, v in res.dropped.items()) or "—"
        rs = ", ".join(f"{m['r']:.3f}" for m in res.matches if m.get("r") is not None) or "—"
        lines.append(f"| {case.name} | {case.vendor} | {case.kind} | {d2x} | {mine} | {dropped} | {rs} | "
                     f"{'pass' if res.audit_ok else f'FAIL ({res.audit_hits})'} |")
    if missing:
        lines.append(f"\nNot run (source package not installed): {', '.join(missing)}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--markdown", default=None, help="write the table here (between the vendor-table markers)")
    ap.add_argument("--case", action="append", help="only these cases")
    a = ap.parse_args(argv)
    work = Path(a.out or tempfile.mkdtemp(prefix="vendor-check-"))
    archives, missing = build(work / "archives", a.case)
    results = [check_case(name, folder, work / "runs" / name) for name, folder in archives.items()]
    table = markdown(results, missing)
    print(table)
    (work / "results.json").write_text(json.dumps([r.__dict__ | {"series": [s.__dict__ for s in r.series]}
                                                   for r in results], default=str, indent=1))
    if a.markdown:
        doc = Path(a.markdown)
        text = doc.read_text()
        start, end = "<!-- vendor-table -->", "<!-- /vendor-table -->"
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        doc.write_text(f"{head}{start}\n{table}{end}{tail}")
    return 0 if all(r.audit_ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
