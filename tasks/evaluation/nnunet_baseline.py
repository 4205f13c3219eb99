"""nnU-Net v2 on the few-shot split: the baseline of MRI-CORE's few-shot table.

Per repeat ``r`` the split is ``fewshot.pick_fewshot`` with seed ``seed + r`` (the patients and
slices ``few-shot`` trains, validates and tests on). It is exported in nnU-Net's raw format
(2D PNGs read by ``NaturalImage2DIO``; ``Dataset{r+1:03d}_fewshotr{r}`` with the train and
validation slices in ``imagesTr``/``labelsTr``, the few-shot split as fold 0 of
``splits_final.json``; the test split once, in ``test/imagesTs``). nnU-Net then plans,
preprocesses, trains (fold 0) and predicts in a child process (tasks/evaluation/nnunet_worker.py)
with its three folders under ``OUT/research/evaluations/<eval_id>/nnunet`` set in that process's
environment only; everything it prints goes to ``nnunet/nnunet.log``. The predictions are scored
with tasks/evaluation/metrics.py exactly as few-shot scores its own (2D DSC, per-patient 3D DSC
and 3D NSD at 1 voxel; foreground test slices ``test_*`` and all test slices ``test_all_*``),
and recorded as ``evaluations`` rows of kind ``few-shot``, model ``nnunet-v2``.

Layout of ``nnunet/``: ``raw/``, ``preprocessed/``, ``results/`` (nnU-Net's), ``test/imagesTs``,
``predictions/r<r>/<case>.png``, ``manifest.json`` (case → slice, patient, role per repeat),
``nnunet.log``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from mrifoundry import settings
from mrifoundry.errors import NotFound, UsageError
from mrifoundry.params import NnunetParams
from mrifoundry.tasks.evaluation.evaluate import eval_dir, record
from mrifoundry.tasks.evaluation.fewshot import load_slices, pick_fewshot
from mrifoundry.tasks.evaluation.metrics import dice_2d, dice_3d, nsd_3d
from mrifoundry.tasks.evaluation.repeats import mean_sd
from mrifoundry.tasks.ingest.labelled2d import load_labelled

__all__ = ["MODEL", "NNUNET_METRICS", "export_cases", "nnunet_split", "run_nnunet", "score"]

MODEL = "nnunet-v2"
#: few-shot's test metrics (nnU-Net keeps its final checkpoint: there is no best validation DSC)
NNUNET_METRICS = ("test_dsc_2d", "test_dsc_3d", "test_nsd_3d", "test_all_dsc_2d", "test_all_dsc_3d",
                  "test_all_nsd_3d")
NSD_TOLERANCE = 1.0   # voxels, few-shot's default

Progress = Callable[[str], None] | None


def nnunet_split(rows: list[dict], params: NnunetParams, repeat: int) -> dict[str, list[dict]]:
    """The few-shot split of ``repeat`` (pick_fewshot with seed ``params.seed + repeat``)."""
    return pick_fewshot(rows, params.k_patients, params.n_val_patients, params.seed + repeat)


def _ident(row: dict) -> dict:
    return {k: (str(row[k]) if k == "patient_id" else row.get(k))
            for k in ("slice_id", "patient_id", "slice_index", "split", "has_foreground")}


def export_cases(rows: list[dict], images_dir: Path, labels_dir: Path | None, prefix: str,
                 size: int) -> list[str]:
    """Write ``rows`` as nnU-Net 2D cases (``<prefix><i>_0000.png`` grey uint8 at ``size``,
    bilinear; labels 0/1 at ``size``, nearest, any non-zero label foreground); the case ids."""
    images_dir.mkdir(parents=True, exist_ok=True)
    if labels_dir is not None:
        labels_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for start in range(0, len(rows), 64):
        chunk = rows[start:start + 64]
        imgs, masks = load_slices(chunk, size, size)
        for j, (img, mask) in enumerate(zip(imgs.numpy(), masks.numpy())):
            case = f"{prefix}{start + j:05d}"
            Image.fromarray(img[0]).save(images_dir / f"{case}_0000.png")
            if labels_dir is not None:
                Image.fromarray(mask.astype(np.uint8)).save(labels_dir / f"{case}.png")
            cases.append(case)
    return cases


def _dataset_json(n_training: int) -> dict:
    # "MRI" is not "CT": nnU-Net normalises the channel by z-score, its default for MRI
    return {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "foreground": 1},
            "numTraining": n_training, "file_ending": ".png", "overwrite_image_reader_writer": "NaturalImage2DIO"}


def score(pred: np.ndarray, target: np.ndarray, rows: list[dict], prefix: str) -> dict[str, float]:
    """Few-shot's metrics of binary ``pred`` / ``target`` [N, H, W] for ``rows`` (patient ids)."""
    if not len(rows):
        return {f"{prefix}_{m}": float("nan") for m in ("dsc_2d", "dsc_3d", "nsd_3d")}
    pids = [str(r["patient_id"]) for r in rows]
    return {f"{prefix}_dsc_2d": dice_2d(pred, target), f"{prefix}_dsc_3d": dice_3d(pred, target, pids).mean,
            f"{prefix}_nsd_3d": nsd_3d(pred, target, pids, tolerance=NSD_TOLERANCE).mean}


def _run_worker(spec: dict, env: dict, log: Path, say: Callable[[str], None], tag: str) -> None:
    spec_path = Path(spec["done"]).with_name("spec.json")
    spec_path.write_text(json.dumps(spec, indent=1))
    with open(log, "ab") as out:
        out.write(f"\n===== {tag} =====\n".encode())
        out.flush()
        start = out.tell()
        proc = subprocess.Popen([sys.executable, "-m", "mrifoundry.tasks.evaluation.nnunet_worker", str(spec_path)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        seen = start
        while True:
            rc = proc.poll()
            with open(log, "rb") as f:   # forward our markers and nnU-Net's epoch lines, nothing else
                f.seek(seen)
                data = f.read()
            cut = data.rfind(b"\n") + 1
            seen += cut
            for line in data[:cut].decode(errors="replace").splitlines():
                if line.startswith("@@ "):
                    say(f"nnU-Net {tag}: {line[3:]}")
                elif re.search(r": Epoch \d+$", line):
                    say(f"nnU-Net {tag}: {line.split(': ', 1)[1].lower()}")
            if rc is not None:
                break
            time.sleep(1.0)
    if rc != 0 or not Path(spec["done"]).exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"nnU-Net failed in {tag} (exit {rc}); log {log}: {tail[0][:300]}")


def _read_predictions(folder: Path, cases: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / f"{c}.png")) > 0 for c in cases])


def _env(root: Path, params: NnunetParams) -> dict:
    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results")}
    env.pop("nnUNet_extTrainer", None)   # trainers come from nnU-Net itself only
    env.pop("nnUNet_n_proc_DA", None)    # set by the worker for training only (spec "workers")
    return env


def run_nnunet(params: NnunetParams, *, progress: Progress = None) -> dict:
    """nnU-Net v2 on ``params.repeats`` few-shot splits of ``params.dataset_id`` (eval_id default
    ``fewshot-nnunet-v2-<dataset>``); ``evaluations`` rows with mean ± std (ddof 0, as few-shot)
    over repeats of :data:`NNUNET_METRICS`.

    Raises:
        NotFound: the dataset is not in the catalog.
        UsageError: too few training patients, or no test slices.
        RuntimeError: nnU-Net failed (the log's path and last line in the message).
    """
    import torch
    say = progress or (lambda line: None)
    research = settings.research_dir(params.out)
    name = params.eval_id or f"fewshot-{MODEL}-{params.dataset_id}"
    try:
        rows = load_labelled(research, params.dataset_id)
    except KeyError as e:
        raise NotFound(f"labelled dataset {params.dataset_id!r} is not in the catalog") from e
    device = "cuda" if params.device == "auto" and torch.cuda.is_available() else (
        "cpu" if params.device == "auto" else params.device)
    out = eval_dir(research, name)
    root = out / "nnunet"
    if root.exists():
        shutil.rmtree(root)   # a fresh run: nnU-Net would otherwise mix old cases and checkpoints in
    root.mkdir(parents=True)
    log, env = root / "nnunet.log", _env(root, params)

    splits = []
    for r in range(params.repeats):
        try:
            splits.append(nnunet_split(rows, params, r))
        except ValueError as e:
            raise UsageError(f"nnU-Net baseline on {params.dataset_id!r}: {e}") from e
    test_all = splits[0]["test_all"]
    if not test_all:
        raise UsageError(f"dataset {params.dataset_id!r} has no test slices")
    test_cases = export_cases(test_all, root / "test" / "imagesTs", None, "t", params.image_size)
    _, target = load_slices(test_all, params.image_size, params.image_size)
    target = target.numpy()
    fg = np.array([bool(r["has_foreground"]) for r in test_all])
    manifest: dict = {"test": [{"case": c, **_ident(r)} for c, r in zip(test_cases, test_all)], "repeats": []}
    say(f"nnU-Net {name}: {len(test_all)} test slices exported, device {device}")

    per_repeat, t0 = [], time.perf_counter()
    for r, split in enumerate(splits):
        ds = f"Dataset{r + 1:03d}_fewshotr{r}"
        raw = root / "raw" / ds
        # no val patients: nnU-Net needs a validation set, so it validates on the training slices
        val = split["val"] or split["train"]
        tr_cases = export_cases(split["train"], raw / "imagesTr", raw / "labelsTr", "c", params.image_size)
        va_cases = (tr_cases if not split["val"] else
                    export_cases(split["val"], raw / "imagesTr", raw / "labelsTr", "v", params.image_size))
        (raw / "dataset.json").write_text(json.dumps(_dataset_json(len(set(tr_cases + va_cases))), indent=1))
        manifest["repeats"].append({"repeat": r, "seed": params.seed + r, "dataset": ds,
                                    "train": [{"case": c, **_ident(x)} for c, x in zip(tr_cases, split["train"])],
                                    "val": [{"case": c, **_ident(x)} for c, x in zip(va_cases, val)]})
        pred_dir = root / "predictions" / f"r{r}"
        pred_dir.mkdir(parents=True)
        spec = {"dataset_id": r + 1, "dataset_name": ds, "train": tr_cases, "val": va_cases,
                "trainer": params.trainer, "epochs": params.epochs, "iterations": params.iterations_per_epoch,
                "val_iterations": params.val_iterations_per_epoch, "device": device, "seed": params.seed + r,
                "num_processes": params.workers, "workers": params.workers, "test_images": str(root / "test" / "imagesTs"),
                "predictions": str(pred_dir), "done": str(root / f"done_r{r}.json")}
        _run_worker(spec, env, log, say, f"repeat {r}")
        info = json.loads(Path(spec["done"]).read_text())
        pred = _read_predictions(pred_dir, test_cases)
        metrics = {**score(pred[fg], target[fg], split["test"], "test"),
                   **score(pred, target, test_all, "test_all")}
        per_repeat.append({"repeat": r, "metrics": metrics, **info})
        say(f"nnU-Net repeat {r}: test 3D DSC {metrics['test_dsc_3d']:.3f}, 3D NSD {metrics['test_nsd_3d']:.3f}")
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))

    summary = {m: mean_sd([float(p["metrics"][m]) for p in per_repeat]) for m in NNUNET_METRICS}
    details = json.dumps({"trainer": params.trainer, "params": params.model_dump(mode="json"),
                          "per_repeat": {m: summary[m]["values"] for m in NNUNET_METRICS},
                          "epochs": [p["epochs"] for p in per_repeat],
                          "iterations_per_epoch": [p["iterations_per_epoch"] for p in per_repeat],
                          "patch_size": [p["patch_size"] for p in per_repeat],
                          "batch_size": [p["batch_size"] for p in per_repeat],
                          "seconds": round(time.perf_counter() - t0, 1)})
    base = {"eval_id": name, "kind": "few-shot", "model": MODEL, "weights_sha256": "n/a",
            "dataset": params.dataset_id, "n": params.repeats, "details": details}
    # per-repeat values with the few-shot flow's seeds (repeat r: seed + r), so `compare` pairs them
    record(research, [{**base, "metric": m, "value": summary[m]["mean"]} for m in NNUNET_METRICS],
           repeats={m: summary[m]["values"] for m in NNUNET_METRICS},
           seeds=[params.seed + p["repeat"] for p in per_repeat])
    table = "\n".join(f"| {m} | {s['mean']:.3f} ± {s['std']:.3f} |" for m, s in summary.items())
    return {"eval_id": name, "summary": summary, "repeats": per_repeat, "eval_dir": str(out), "log": str(log),
            "markdown": f"# nnU-Net v2 few-shot `{name}`\n\n| metric | mean ± std |\n|---|---|\n{table}"}
