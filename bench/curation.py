"""Section 2: full curation cost of one series, in CPU-seconds, stage by stage.

The plain stage functions run in sequence on a generated series, exactly as the flow
chains them (tasks/curation/stages.py): de-id → continuity → PNG → NIfTI (RAS, 1 mm).
CPU time is ``time.process_time`` (all threads of this process). Run as
``python -m bench.curation --rss SERIES_DIR`` it curates one series in a fresh process
and prints its peak RSS (used by bench/scaling.py: a worker process's footprint).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import median
from bench.series import make_series

SALT = "bench-salt-not-secret"
PHI = {"PatientID": "BENCH0001", "PatientName": "Bench^Patient", "AccessionNumber": "BENCHACC1",
       "StudyDate": "20190315", "InstitutionName": "Bench Hospital"}
DUKE_SERIES = 116_806
DUKE_CORES = 64


def curate_series(files: list[Path], work: Path) -> dict[str, tuple[float, float]]:
    """Run the four stages on one series' files; (cpu_s, wall_s) per stage."""
    from mrifoundry.tasks.curation.continuity.checks import ContinuityConfig, check_series
    from mrifoundry.tasks.curation.convert.nifti import NiftiConfig, volumes_to_nifti
    from mrifoundry.tasks.curation.convert.png import volume_to_png
    from mrifoundry.tasks.curation.deid.deidentify import DeidConfig, PseudonymStore, deidentify_exam
    from mrifoundry.tasks.curation.quality.series import series_quality
    from mrifoundry.tasks.curation.review.viewer_volumes import write_viewer_volume

    store = PseudonymStore(work / "restricted" / "pseudonyms.sqlite", SALT)
    out: dict[str, tuple[float, float]] = {}

    def timed(name, fn):
        c0, w0 = time.process_time(), time.perf_counter()
        r = fn()
        out[name] = (time.process_time() - c0, time.perf_counter() - w0)
        return r

    try:
        res = timed("deid", lambda: deidentify_exam(files, work / "dicom", "benchexam", DeidConfig(SALT), store))
        (s,) = res.series
        chk = timed("continuity", lambda: check_series(s.series_id, s.files, ContinuityConfig()))
        assert chk.status == "ok", chk.reason
        timed("png", lambda: [volume_to_png(v, work / "png" / s.series_id) for v in chk.volumes])
        nii = work / "nifti" / f"{s.series_id}.nii.gz"
        rec = timed("nifti", lambda: volumes_to_nifti(chk.volumes, nii, NiftiConfig(voxel_size_mm=1.0)))
        # the convert stage's quality record (metrics + three-plane thumbnail) on the array just written
        timed("iqm", lambda: series_quality(rec.data, rec.zooms, chk.meta.get("orientation"), None,
                                            thumb_path=work / "qc" / "thumbs" / f"{s.series_id}.png"))
        # the review page's 8-bit viewer copy (built at the end of a run, from the NIfTI on disk)
        timed("viewer", lambda: write_viewer_volume(nii, work / "qc" / "volumes" / f"{s.series_id}.js", s.series_id))
    finally:
        store.close()
    return out


def run(sizes: list[tuple[int, int]], runs: int) -> dict:
    rows, targets, raw, shares = [], [], {}, {}
    for size, n in sizes:
        src = Path(tempfile.mkdtemp(prefix="bench-cur-"))
        per_run = []
        try:
            files = make_series(src / "raw", size, n, extra=PHI)
            for i in range(runs + 1):   # round 0 warms imports and caches, not recorded
                work = src / f"run{i}"
                r = curate_series(files, work)
                shutil.rmtree(work, ignore_errors=True)
                if i:
                    per_run.append(r)
        finally:
            shutil.rmtree(src, ignore_errors=True)
        label = f"{size}²×{n}"
        stages = list(per_run[0])
        cpu = {k: median([r[k][0] for r in per_run]) for k in stages}
        total_cpu = median([sum(v[0] for v in r.values()) for r in per_run])
        total_wall = median([sum(v[1] for v in r.values()) for r in per_run])
        raw[label] = per_run
        conv = median([r["png"][0] + r["nifti"][0] for r in per_run])
        share = median([r["iqm"][0] / (r["png"][0] + r["nifti"][0]) for r in per_run])
        view_share = median([r["viewer"][0] / (r["png"][0] + r["nifti"][0]) for r in per_run])
        rows.append([label, *(f"{cpu[k]:.3f}" for k in stages), f"{total_cpu:.3f}", f"{total_wall:.3f}",
                     f"{total_cpu / n * 1000:.1f}", f"{100 * share:.1f} %", f"{100 * view_share:.1f} %", len(per_run)])
        raw[label + " conversion_cpu"] = conv
        shares[label] = share
        if size == 512 and n == 60:
            hours = total_cpu * DUKE_SERIES / DUKE_CORES / 3600
            targets.append({"name": "curation CPU per 512²×60 series", "target": "≤ 2.0 CPU-s",
                            "measured": f"{total_cpu:.2f} CPU-s", "met": total_cpu <= 2.0})
            targets.append({"name": f"implied Duke-110K ({DUKE_SERIES:,} series) on {DUKE_CORES} cores",
                            "target": "≤ 1.0 h", "measured": f"{hours:.2f} h", "met": hours <= 1.0})
    worst = max(shares, key=shares.get)
    targets.insert(0, {"name": f"IQM + thumbnail cost as a share of conversion (PNG + NIfTI), worst series size ({worst})",
                       "target": "≤ 15 %", "measured": f"{100 * shares[worst]:.1f} %", "met": shares[worst] <= 0.15})
    return {
        "tables": [{
            "title": "Curation cost per series (median CPU-s per stage; de-id → continuity → PNG → NIfTI RAS 1 mm "
                     "→ quality metrics and thumbnail; the review page's viewer copy)",
            "headers": ["series", "deid", "continuity", "png", "nifti 1 mm", "iqm + thumb", "viewer copy",
                        "total CPU-s", "total wall-s", "CPU-ms / slice", "iqm / conversion", "viewer / conversion",
                        "runs"],
            "rows": rows,
            "note": (f"Implied Duke-110K hours = CPU-s of a 512²×60 series × {DUKE_SERIES:,} series / "
                     f"{DUKE_CORES} cores / 3600 (Duke-110K averages ≈ 59 slices per series); "
                     "I/O wait and orchestration not included. iqm / conversion = the quality stage's CPU-s "
                     "(tasks/curation/quality/series.py: masks, metrics, thumbnail) over PNG + NIfTI's; the viewer "
                     "copy is made once per series when the review page is built (tasks/curation/review/)."),
        }],
        "targets": targets, "raw": raw,
    }


def _rss_mb() -> float:
    """Peak RSS of this process, MB. VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts
    at its parent's RSS at fork time (it survives exec), which would report the bench's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def _rss_main(series_dir: Path) -> None:
    import mrifoundry.tasks.curation.continuity.checks, mrifoundry.tasks.curation.convert.nifti, mrifoundry.tasks.curation.convert.png, mrifoundry.tasks.curation.deid.deidentify  # noqa: F401,E401 - baseline
    import dicom2nifti.convert_dicom  # noqa: F401
    base = _rss_mb()
    work = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    try:
        curate_series(sorted(series_dir.glob("*.dcm")), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"baseline_mb": base, "peak_mb": _rss_mb()}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rss", type=Path, required=True, help="series folder to curate in this process")
    _rss_main(ap.parse_args().rss)
