"""Volume-recipe throughput: volumes per second at 96³ and peak memory, bf16.

    python -m bench.gpu_pretrain3d [--tiny] [--json OUT.json] [--steps 10]

For each volume recipe (Triad Swin-B v2, Triad plain conv, BrainSegFounder, PRISM) two
measurements on the current device (CUDA if present, else CPU), on synthetic crops (no data
loading — the GPU-bound ceiling):

- *method step*: the recipe's full training step (``tasks.pretraining.volumes.build_method``: encoder,
  decoder, SSL heads and losses) + backward + AdamW, at the recipe's batch size;
- *encoder step*: the bare encoder (same batch, a sum of its pooled features as the loss) —
  the reference measured in the same run: ``ratio = method / encoder`` is the share of the
  backbone's rate the recipe's heads and second views leave.

``--tiny`` runs the tiny recipes at 32³ on CPU in seconds (tests).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.gpu_pretrain import _timed, gpu_bench_cli

RECIPES = ("triad", "triad-unet", "brainsegfounder", "prism")
RECORDED = Path(__file__).resolve().parent / "results" / "gpu_pretrain3d.json"


def synthetic_batch(cfg, batch: int, device: torch.device, n_body_parts: int = 4) -> dict:
    r = cfg.roi
    b = {"image": torch.rand(batch, cfg.in_channels, r, r, r, device=device)}
    if cfg.method == "triad":
        b["text"] = torch.nn.functional.normalize(torch.randn(batch, 384, device=device), dim=1)
    if cfg.method == "prism":
        b["image2"] = torch.rand_like(b["image"])
        b["meta"] = torch.randn(batch, 3, device=device)
        b["meta2"] = torch.randn(batch, 3, device=device)
        b["body_part"] = torch.randint(0, n_body_parts, (batch,), device=device)
    return b


def bench_recipe(name: str, batch: int | None, steps: int, warmup: int, device: torch.device) -> dict:
    from mrifoundry.tasks.pretraining.recipes import recipe
    from mrifoundry.tasks.pretraining.volumes import build_method
    cfg = recipe(name, **({"batch_size": batch} if batch else {}))
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16)
    data = synthetic_batch(cfg, cfg.batch_size, device)
    out = {"recipe": name, "method": cfg.method, "encoder": cfg.encoder, "roi": cfg.roi, "batch": cfg.batch_size,
           "steps": steps}
    for what in ("method", "encoder"):
        torch.manual_seed(0)
        model = build_method(cfg, 4).to(device)
        enc = model.encoder3d
        params = model.parameters() if what == "method" else enc.parameters()
        opt = torch.optim.AdamW(params, lr=1e-4)

        def step():
            with amp:
                loss = model(data)["loss"] if what == "method" else enc.pooled(data["image"]).float().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        secs = _timed(step, device, steps, warmup)
        out[f"{what}_volumes_per_s"] = cfg.batch_size * steps / secs
        out[f"{what}_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["ratio"] = out["method_volumes_per_s"] / out["encoder_volumes_per_s"]
    return out


def run(tiny: bool, batch: int | None, steps: int, warmup: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    names = [f"{n}-tiny" for n in ("triad", "brainsegfounder", "prism")] if tiny else list(RECIPES)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "tiny": tiny,
            "recipes": [bench_recipe(n, batch, steps, warmup, device) for n in names]}


def render_markdown(res: dict) -> str:
    mem = (lambda x: f"{x:.1f}" if x is not None else "n/a")  # noqa: E731
    lines = [f"Device: **{res['device']}**, torch {res['torch']}, bf16 autocast, synthetic crops.", "",
             "| recipe | encoder | crop | batch | volumes/s (recipe step) | peak GiB | volumes/s (encoder alone) | "
             "recipe / encoder |", "|---|---|---|---|---|---|---|---|"]
    for r in res["recipes"]:
        lines.append(f"| {r['recipe']} | {r['encoder']} | {r['roi']}³ | {r['batch']} | {r['method_volumes_per_s']:.1f} "
                     f"| {mem(r['method_peak_mem_gib'])} | {r['encoder_volumes_per_s']:.1f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def section(tiny: bool = False) -> dict:
    """The ``GPU volume pretraining`` section of docs/benchmarks.md: measured now on CUDA; else
    the figures recorded on a lent GPU machine (bench/results/gpu_pretrain3d.json); else a note."""
    if torch.cuda.is_available():
        res, source = run(tiny, None, 10, 3), "measured in this run"
    elif RECORDED.exists():
        res, source = json.loads(RECORDED.read_text()), f"recorded in `{RECORDED.relative_to(RECORDED.parents[2])}`"
    else:
        return {"tables": [], "targets": [], "raw": None,
                "note": "Not measured: no GPU machine was lent to the sessions so far. On one, `python -m "
                        "bench.gpu_pretrain3d --json bench/results/gpu_pretrain3d.json` records the figures this "
                        "section then reports."}
    rows = [[r["recipe"], r["encoder"], f"{r['roi']}³", r["batch"], round(r["method_volumes_per_s"], 1),
             round(r["method_peak_mem_gib"], 1) if r["method_peak_mem_gib"] is not None else "n/a",
             round(r["encoder_volumes_per_s"], 1), round(r["ratio"], 2)] for r in res["recipes"]]
    return {"tables": [{"title": f"{res['device']}, torch {res['torch']} ({source})",
                        "headers": ["recipe", "encoder", "crop", "batch", "volumes/s", "peak GiB",
                                    "encoder-only volumes/s", "recipe / encoder"],
                        "rows": rows,
                        "note": "synthetic crops (no data loading): the GPU-bound ceiling of each recipe's step."}],
            "targets": [], "raw": res}


def main(argv: list[str] | None = None) -> int:
    return gpu_bench_cli(argv, "bench.gpu_pretrain3d", __doc__, run, render_markdown, tiny_help="tiny recipes at 32³ on CPU (seconds)",
                         steps=10, warmup=3)


if __name__ == "__main__":
    raise SystemExit(main())
