"""Starting a pretraining run: its inputs written into the run directory, training in this
process or under torchrun, and the ``models`` row of what it produced.

The runner (tasks/pretraining/runner.py) calls these in order: ``write_slices`` / ``write_stacks`` /
``write_volumes`` → ``train_slices`` / ``train_volumes_run`` → ``model_row``. Re-running a
run name resumes it (``default_run_name`` makes the same name for the same request).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from mrifoundry import REPO_ROOT
from mrifoundry.tasks.data.contrast_stacks import DEFAULT_QUERY as STACKS_QUERY
from mrifoundry.tasks.data.contrast_stacks import brainfound_stacks
from mrifoundry.tasks.data.slices import DEFAULT_QUERY as SLICES_QUERY
from mrifoundry.errors import UsageError
from mrifoundry.tasks.data.slices import query_slices, read_slice_list, volume_windows
from mrifoundry.tasks.data.text_embed import describe_series, embed_descriptions
from mrifoundry.tasks.data.volumes import DEFAULT_QUERY as VOLUMES_QUERY
from mrifoundry.tasks.data.volumes import PAIRED_QUERY, query_volumes, select_pairs
from mrifoundry.tasks.pretraining import slices, volumes
from mrifoundry.tasks.pretraining.recipes import SliceRun, VolumeRun

log = logging.getLogger(__name__)

OnLog = Callable[[dict], None]


def default_query(cfg) -> str:
    """The query a recipe trains on when the caller gives none."""
    if cfg.kind == "volumes":
        return PAIRED_QUERY if cfg.method == "prism" else VOLUMES_QUERY
    return STACKS_QUERY if cfg.inputs == "contrast_stacks" else SLICES_QUERY


def default_run_name(recipe: str, query: str, overrides: dict) -> str:
    """Same recipe, query and overrides → same name → a re-run resumes instead of restarting."""
    key = json.dumps([recipe, query, overrides], sort_keys=True)
    return f"{recipe}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- inputs of a run
def write_slices(research: Path, query: str, run_dir: Path, normalization: str = "slice") -> int:
    """The query's PNG slices → RUN/slices.txt (``png<TAB>lo<TAB>hi`` lines for volume-wise
    normalisation, :func:`tasks.data.slices.volume_windows`); returns how many."""
    rows = query_slices(research, query)
    run_dir.mkdir(parents=True, exist_ok=True)
    if normalization == "volume":
        wins = volume_windows(research, [r["slice_id"] for r in rows])
        text = "".join(f"{r['png_file']}\t{lo!r}\t{hi!r}\n" for r, (lo, hi) in zip(rows, wins))
    elif normalization == "slice":
        text = "".join(r["png_file"] + "\n" for r in rows)
    else:
        raise UsageError(f"normalization {normalization!r}: slice or volume")
    (run_dir / "slices.txt").write_text(text)
    return len(rows)


def write_stacks(research: Path, query: str, run_dir: Path, size: int) -> tuple[int, int, list[dict]]:
    """BrainFound: the query's brain series → axial T1/T2/FLAIR stacks (RGB PNG) → RUN/slices.txt.
    Returns (stacks, exams, skipped exams with their reasons)."""
    built = brainfound_stacks(research, run_dir / "stacks", sql=query, size=size)
    (run_dir / "slices.txt").write_text("".join(r["png_file"] + "\n" for r in built.rows))
    return len(built.rows), len({r["exam_id"] for r in built.rows}), built.skipped


def write_volumes(research: Path, query: str, run_dir: Path, method: str) -> tuple[int, int]:
    """The query's volumes → RUN/volumes.json (+ RUN/texts.npy, description embeddings, for
    Triad). PRISM keeps only series with a second series in their exam. Returns (volumes,
    series left out)."""
    rows = query_volumes(research, query)
    left_out = 0
    if method == "prism":
        paired = [r for r, p in zip(rows, select_pairs(rows)) if p]
        left_out, rows = len(rows) - len(paired), paired
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v)) for k, v in r.items()}
            for r in rows]
    (run_dir / "volumes.json").write_text(json.dumps(rows))
    if method == "triad":
        texts = embed_descriptions(rows, research / "models" / ".text-embeddings.parquet")
        np.save(run_dir / "texts.npy", texts)
        log.info("embedded %d descriptions (%d distinct) with all-MiniLM-L6-v2", len(rows),
                 len({describe_series(r) for r in rows}))
    return len(rows), left_out


# ---------------------------------------------------------------- training
def torchrun(module: str, job: Path, nproc: int, on_log: OnLog) -> dict:
    """``python -m torch.distributed.run -m <module> JOB``; rank 0's logged records go to
    ``on_log``; returns its ``result.json``.

    Raises:
        RuntimeError: torchrun failed (the message ends with its last 40 lines).
    """
    (job.parent / "result.json").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, str(job)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        try:
            on_log(json.loads(line))
        except (ValueError, KeyError, TypeError):
            tail = (tail + [line])[-40:]
    if proc.wait() != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}:\n" + "\n".join(tail))
    return json.loads((job.parent / "result.json").read_text())


def train_slices(run_dir: Path, config: dict, init_weights: str | None, resume: bool, nproc: int,
                 on_log: OnLog) -> dict:
    """Train on RUN/slices.txt in this process (nproc=1) or under torchrun (DDP: NCCL on GPUs,
    gloo on CPU); returns the result as a dict."""
    if nproc <= 1:
        paths, windows = read_slice_list(run_dir / "slices.txt")
        return slices.train(SliceRun.from_dict(config), paths, run_dir,
                            init_weights=Path(init_weights) if init_weights else None, resume=resume,
                            on_log=on_log, windows=windows).as_dict()
    job = run_dir / "job.json"
    job.write_text(json.dumps({"config": config, "paths_file": str(run_dir / "slices.txt"), "run_dir": str(run_dir),
                               "init_weights": init_weights, "resume": resume}))
    return torchrun(slices.__name__, job, nproc, on_log)


def train_volumes_run(run_dir: Path, config: dict, resume: bool, nproc: int, on_log: OnLog,
                      init_state: str | None = None, cache_dir: str | None = None) -> dict:
    """Train on RUN/volumes.json (and RUN/texts.npy) in this process or under torchrun."""
    rows_file, texts_file = run_dir / "volumes.json", run_dir / "texts.npy"
    if nproc <= 1:
        return volumes.train_volumes(VolumeRun.from_dict(config), json.loads(rows_file.read_text()), run_dir,
                                     texts=np.load(texts_file) if texts_file.exists() else None,
                                     init_state=Path(init_state) if init_state else None, resume=resume,
                                     cache_dir=Path(cache_dir) if cache_dir else None, on_log=on_log).as_dict()
    job = run_dir / "job.json"
    job.write_text(json.dumps({"config": config, "rows_file": str(rows_file), "run_dir": str(run_dir),
                               "texts_file": str(texts_file) if texts_file.exists() else None,
                               "init_state": init_state, "resume": resume, "cache_dir": cache_dir}))
    return torchrun(volumes.__name__, job, nproc, on_log)


# ---------------------------------------------------------------- the models row
def latest_checkpoint(run_dir: Path, pattern: str) -> Path | None:
    """The checkpoint of the highest iteration (the number after the ``_`` of its path:
    ``eval/training_<it>/…`` or ``checkpoints/encoder_<it>.pth``) — what a re-run of a
    finished run reports."""
    done = sorted(run_dir.glob(pattern),
                  key=lambda p: int(re.search(r"_(\d+)", str(p.relative_to(run_dir))).group(1)))
    return done[-1] if done else None


_CHECKPOINTS = {"slices": "eval/training_*/teacher_checkpoint.pth", "volumes": "checkpoints/encoder_*.pth"}


def model_row(research: Path, run_dir: Path, result: dict, *, kind: str, model_id: str, recipe: str,
              objective: str, arch: str, init: str, query: str, n: int, world_size: int) -> dict:
    """The ``models`` row of a finished run of ``kind`` slices|volumes (before its loss curve is drawn)."""
    pattern = _CHECKPOINTS[kind]
    ckpt = Path(result["checkpoint"]) if result.get("checkpoint") else latest_checkpoint(run_dir, pattern)
    return {"model_id": model_id, "recipe": recipe, "objective": objective, "arch": arch, "init": init,
            "query": query, "n_slices": n, "epochs": result["epochs_done"], "iterations": result["iterations"],
            "world_size": world_size, "final_loss": result["final_loss"], "images_per_s": result["images_per_s"],
            "checkpoint_path": str(ckpt.relative_to(research)) if ckpt else None}
