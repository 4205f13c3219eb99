"""Section: one training draw of the volume recipes, uncached vs the decoded-volume cache.

A draw (``tasks.data.volumes.VolumeDataset.__getitem__``) is a ``roi³`` crop with flips
of a robust-min-max-scaled RAS 1 mm NIfTI. Uncached, every draw decompresses the whole
``.nii.gz`` and takes its percentiles; with ``tasks.data.volume_cache`` the first draw of a
volume stores it as float16 ``.npy`` and later draws memory-map it. The volumes are
nilearn's MNI152 1 mm T1 template (real anatomy, 197×233×189) written as ``.nii.gz``.

    python -m bench.volume_loading [--roi 96] [--volumes 4] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.common import median

TARGET_SPEEDUP = 10.0


def _volumes(folder: Path, n: int, shape: tuple[int, int, int] | None) -> list[dict]:
    from nilearn import datasets
    t1 = datasets.load_mni152_template(resolution=1)
    data = np.asarray(t1.dataobj, dtype=np.float32) * 1000.0
    if shape is not None:   # smaller sizes for the smoke run: the centre of the template
        data = data[tuple(slice((full - s) // 2, (full - s) // 2 + s) for full, s in zip(data.shape, shape))]
    rows = []
    for i in range(n):
        path = folder / f"vol{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.roll(data, 3 * i, axis=0), t1.affine), str(path))
        rows.append({"series_id": f"s{i}", "exam_id": "e", "nifti_file": str(path)})
    return rows


def run(roi: int = 96, n_volumes: int = 4, runs: int = 3, shape: tuple[int, int, int] | None = None) -> dict:
    from mrifoundry.tasks.data.volumes import VolumeDataset
    with tempfile.TemporaryDirectory(prefix="bench-volumes-") as tmp:
        folder = Path(tmp)
        rows = _volumes(folder, n_volumes, shape)
        plain = VolumeDataset(rows, roi, seed=0)
        cached = VolumeDataset(rows, roi, seed=0, cache_dir=str(folder / "cache"))
        cold = []
        for i in range(n_volumes):            # first epoch: every volume is a miss
            t = time.perf_counter()
            cached[i]
            cold.append(time.perf_counter() - t)
        ratios, t_plain, t_warm = [], [], []
        for epoch in range(1, runs + 1):      # interleaved rounds: uncached draw, cached draw
            plain.set_epoch(epoch)
            cached.set_epoch(epoch)
            for i in range(n_volumes):
                t = time.perf_counter()
                plain[i]
                a = time.perf_counter() - t
                t = time.perf_counter()
                cached[i]
                b = time.perf_counter() - t
                t_plain.append(a)
                t_warm.append(b)
                ratios.append(a / b)
        cache_mb = sum(p.stat().st_size for p in (folder / "cache").iterdir()) / 2**20
        nifti_mb = sum(Path(r["nifti_file"]).stat().st_size for r in rows) / 2**20
        vshape = nib.load(rows[0]["nifti_file"]).shape
    speedup = median(ratios)
    row = [f"{'×'.join(map(str, vshape))} → {roi}³", f"{median(t_plain) * 1e3:.0f}", f"{median(cold) * 1e3:.0f}",
           f"{median(t_warm) * 1e3:.1f}", f"{speedup:.0f}×",
           f"{nifti_mb / n_volumes:.1f} / {cache_mb / n_volumes:.1f}", f"{len(ratios)}"]
    return {
        "tables": [{
            "title": "One volume-recipe draw (crop + flips of a scaled 1 mm NIfTI), ms",
            "headers": ["volume → crop", "uncached", "cache miss (first draw)", "cache hit", "hit speed-up",
                        "MB per volume (.nii.gz / cache)", "draws"],
            "rows": [row],
            "note": ("Uncached and cached draws alternate within each round; the speed-up is the median of "
                     "per-draw ratios. Hits are read from the OS page cache here; on a cold disk a hit reads "
                     "only the crop's pages (≈ roi³ × 2 bytes)."),
        }],
        "targets": [{"name": f"volume draw with the cache vs uncached ({roi}³ crop)",
                     "target": f"≥ {TARGET_SPEEDUP:.0f}× faster", "measured": f"{speedup:.0f}×",
                     "met": speedup >= TARGET_SPEEDUP}],
        "raw": {"uncached_s": t_plain, "cold_s": cold, "warm_s": t_warm, "ratios": ratios, "shape": list(vshape),
                "roi": roi, "cache_mb": cache_mb, "nifti_mb": nifti_mb},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roi", type=int, default=96)
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args(argv)
    res = run(a.roi, a.volumes, a.runs)
    print(json.dumps(res["tables"][0]["rows"][0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
