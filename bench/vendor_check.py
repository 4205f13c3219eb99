"""Curate every real vendor case of :mod:`bench.vendor_corpus`, convert it with dcm2niix
too, and compare: which series each converts, and our NIfTI against dcm2niix's in world space.

    python -m bench.vendor_check [--out DIR] [--markdown docs/vendors.md] [--case NAME ...]

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

from mrifoundry import ids
from bench import vendor_corpus, vendor_variants


@dataclass
class SeriesResult:
    series_id: str
    image_set: str
    status: str
    reason: str | None
    nifti: str | None
    shape: str | None
    n_slices: int | None = None
    n_timepoints: int | None = None


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
    override :class:`mrifoundry.params.CurateParams` defaults."""
    from mrifoundry.catalog.views import connect
    from mrifoundry.params import CurateParams
    from mrifoundry.tasks.curation.audit.phi_audit import audit_output
    from mrifoundry.tasks.curation.runner import CurationFailed, run_curation
    from mrifoundry.tasks.curation.workspace import Workspace

    ws = Workspace(out)
    params = CurateParams(**{"archive": str(archive), "reports": None, "out": str(out), "workers": 1, "phi_audit": False,
                             **params})
    try:
        run_curation(params)   # audited below, without Prefect's database
    except CurationFailed:
        pass   # failed items are rows of the table like any other outcome
    report = audit_output(out, prefect_home=Path(out) / "no-prefect", log_dirs=[])
    con = connect(ws.research)
    try:
        rows = con.execute("SELECT series_id, coalesce(image_set, ''), status, reason, nifti_path, nifti_shape, "
                           "n_slices, n_timepoints FROM series ORDER BY series_id").fetchall()
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
        subprocess.run([dcm2niix.bin, "-b", "y", "-ba", "n", "-z", "n", "-f", "%j_%s", "-o", str(out), str(src)],
                       capture_output=True, timeout=600, check=False)
    return {p.name[:-4]: p for p in sorted(out.glob("*.nii"))}


def _uid_of(stem: str) -> str:
    m = re.match(r"[0-9.]+[0-9]", stem)
    return m.group(0) if m else stem


def _our_set(path: Path, stem: str, reversed_sets: bool) -> str | None:
    """Which of our image sets a dcm2niix output is: '' , 'phase', 'reversed' (GE pepolar
    volumes dcm2niix numbers SeriesNumber + 1000), or None for its derived ``_ADC`` copy."""
    rest = stem[len(_uid_of(stem)):]
    if rest.endswith("_ADC"):
        return None
    if "_ph" in rest:
        return "phase"
    side = path.with_suffix(".json")
    number = json.loads(side.read_text()).get("SeriesNumber", 0) if side.exists() else 0
    return "reversed" if reversed_sets and int(number or 0) >= 1000 else ""


def check_case(name: str, archive: Path, work: Path) -> CaseResult:
    """Curate (every time point written) and run dcm2niix; compare each of its outputs with the
    series of ours it corresponds to (same SeriesInstanceUID and image set)."""
    from bench.vendor_compare import compare_outputs
    res = curate_case(archive, work / "out", nifti_timepoints="all")
    outputs = run_dcm2niix(archive, work / "dcm2niix")
    res.dcm2niix = {stem: tuple(int(s) for s in nib.load(p).shape) for stem, p in outputs.items()}
    from mrifoundry.settings import load_salt
    salt = load_salt(work / "out")   # restricted: this tool runs where the archive is
    ours = {s.series_id: s for s in res.series}
    reversed_sets = any(s.image_set == "reversed" for s in res.series)
    for stem, path in outputs.items():
        which = _our_set(path, stem, reversed_sets)
        match = {"dcm2niix": stem, "shape": res.dcm2niix[stem], "series_id": None, "status": "absent",
                 "reason": None, "r": None}
        if which is None:   # dcm2niix's ADC/trace copy of a DWI: ours is the trace image set
            match.update(status="derived", reason="dcm2niix _ADC copy")
            res.matches.append(match)
            continue
        uid = _uid_of(stem)
        sid = (ids.series_id(f"{uid}/{which}" if which else uid, salt) if salt else None)
        s = ours.get(sid)
        match.update(series_id=sid, status=s.status if s else "absent", reason=s.reason if s else None)
        if s and s.status == "ok" and s.nifti:
            match.update(compare_outputs(work / "out" / "research" / s.nifti, path, s.n_slices))
            match["r"] = match.get("r_min")
        res.matches.append(match)
    return res


def _describe(name: str) -> tuple[str, str]:
    try:
        case = vendor_corpus.by_name(name)
    except StopIteration:
        case = vendor_variants.by_name(name)
    return case.vendor, case.kind


def _measures(m: dict) -> str:
    """The differential measures of one matched output, short."""
    if m.get("timepoints") is None:
        return "—"
    parts = [f"t {m['timepoints'][0]}/{m['timepoints'][1]}", f"z {m['slices'][0]}/{m['slices'][1]}",
             f"r ≥ {m['r_min']:.3f}" if m.get("r_min") is not None else "r —"]
    if m.get("bvals"):
        parts.append("bvals " + ("=" if m.get("bval_ok") else f"≠ ({m['bvals'][0]} / {m['bvals'][1]})"))
    if m.get("bvec_max_deg") is not None:
        parts.append(f"bvecs ≤ {m['bvec_max_deg']:.2f}°")
    pe = m.get("pe") or (None, None, None)
    if pe[0] or pe[1]:
        parts.append(f"PE {pe[0] or '—'}/{pe[1] or '—'}" + ("" if pe[2] is not False else " ✗"))
    return (" · ".join(parts)) + (" ✓" if m.get("ok") else " ✗")


def markdown(results: list[CaseResult], missing: list[str]) -> str:
    lines = ["| case | vendor | kind | dcm2niix outputs (shape) | ours: series (status / reason) | "
             "dropped files | ours vs dcm2niix (t, z: ours/theirs; r at every time point) | PHI audit |",
             "|---|---|---|---|---|---|---|---|"]
    for res in results:
        vendor, kind = _describe(res.case)
        d2x = "<br>".join(f"{'×'.join(map(str, m['shape']))}" for m in res.matches) or "none"
        mine = "<br>".join(f"{s.status}{' ' + s.image_set if s.image_set else ''}"
                           f"{' ' + (s.shape or '') if s.status == 'ok' else ' / ' + str(s.reason)}"
                           for s in res.series) or "none"
        dropped = ", ".join(f"{k} {v}" for k, v in res.dropped.items()) or "—"
        measures = "<br>".join(_measures(m) for m in res.matches if m.get("timepoints")) or "—"
        lines.append(f"| {res.case} | {vendor} | {kind} | {d2x} | {mine} | {dropped} | {measures} | "
                     f"{'pass' if res.audit_ok else f'FAIL ({res.audit_hits})'} |")
    if missing:
        lines.append(f"\nNot run (source package not installed): {', '.join(missing)}.")
    return "\n".join(lines) + "\n"


def build_all(dest: Path, names: list[str] | None = None) -> tuple[dict[str, Path], list[str]]:
    """The real cases, then the generated variants, one archive folder each."""
    built, missing = vendor_corpus.build(dest, names)
    more, missing_variants = vendor_variants.build_variants(dest, names)
    return {**built, **more}, missing + missing_variants


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--markdown", default=None, help="write the table here (between the vendor-table markers)")
    ap.add_argument("--case", action="append", help="only these cases")
    a = ap.parse_args(argv)
    work = Path(a.out or tempfile.mkdtemp(prefix="vendor-check-"))
    archives, missing = build_all(work / "archives", a.case)
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
