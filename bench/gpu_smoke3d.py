"""The volume trainer end to end on a GPU: real data loading, bf16, full-size recipes.

    python -m bench.gpu_smoke3d [--out DIR] [--iterations 6] [--json OUT.json]

Writes a few synthetic NIfTI volumes (two exams, three series each, 112³ at 1 mm, shifted
frames so PRISM's partner resampling does real work) and runs ``tasks.pretraining.volumes.train_volumes``
for the full ``triad``, ``brainsegfounder`` and ``prism`` recipes for a few iterations with
loader workers — the path the flows take — then reloads each checkpoint through the zoo.
Reports finite losses, volumes/s including data loading, and peak memory. On CPU it runs
the tiny recipes instead (a check of the script itself).
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch


def synthetic_rows(root: Path, size: int = 112, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(2):
        for s, (seq, tr, te) in enumerate((("T1", 600.0, 11.0), ("T2", 4500.0, 95.0), ("FLAIR", 9000.0, 85.0))):
            x, y, z = np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij")
            blob = np.exp(-((x - 0.2 * e) ** 2 + y ** 2 + (z + 0.1 * s) ** 2) * (3 + s))
            vol = (1000 * blob + 50 * rng.standard_normal((size,) * 3)).astype(np.float32)
            affine = np.eye(4)
            affine[:3, 3] = [-size / 2 + 3 * s, -size / 2 - 2 * s, -size / 2 + s]
            path = root / f"e{e}_s{s}.nii.gz"
            nib.save(nib.Nifti1Image(vol, affine), str(path))
            rows.append({"series_id": f"s{e}{s}", "exam_id": f"e{e}", "nifti_file": str(path), "sequence_type": seq,
                         "body_part": "brain" if e == 0 else "knee", "repetition_time": tr, "echo_time": te,
                         "flip_angle": 90.0})
    return rows


def run(out: Path, iterations: int) -> dict:
    from mrifoundry.models import zoo
    from mrifoundry.tasks.pretraining.recipes import recipe
    from mrifoundry.tasks.pretraining.volumes import train_volumes
    cuda = torch.cuda.is_available()
    rows = synthetic_rows(out)
    texts = torch.nn.functional.normalize(torch.randn(len(rows), 384), dim=1).numpy()
    results = []
    for name, entry in (("triad", "triad-swin"), ("brainsegfounder", "brainsegfounder"), ("prism", "prism")):
        overrides = dict(max_iterations=iterations, log_every=1, batch_size=2 if name != "triad" else 3,
                         num_workers=4 if cuda else 0)
        cfg = recipe(name if cuda else f"{name}-tiny", **overrides)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        records: list[dict] = []
        res = train_volumes(cfg, rows, out / name, texts=texts if cfg.method == "triad" else None,
                            on_log=records.append)
        m = zoo.load(entry, res.checkpoint, device="cuda" if cuda else "cpu")
        feats = m.pooled(torch.rand(1, 1, cfg.roi, cfg.roi, cfg.roi))
        results.append({"recipe": cfg.method if cuda else f"{name}-tiny", "encoder": cfg.encoder, "roi": cfg.roi,
                        "batch": overrides["batch_size"], "iterations": res.iterations,
                        "losses": [r["loss"] for r in records], "finite": all(math.isfinite(r["loss"]) for r in records),
                        "volumes_per_s_last": records[-1]["images_per_s"],
                        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                        "zoo_embedding_dim": int(feats.shape[1]), "zoo_finite": bool(torch.isfinite(feats).all())})
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "runs": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_smoke3d", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(a.out or Path(tmp), a.iterations)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0 if all(r["finite"] and r["zoo_finite"] for r in res["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
