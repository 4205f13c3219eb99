"""Timing helpers, machine description and versions shared by the bench sections.

Every figure is a median of several runs; where a reference exists the runs are
interleaved (ours, ref, ours, ref …) so that load from other processes hits both alike,
and the ratio is the median of the per-round ratios.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pydicom", "nibabel", "numpy", "dicom2nifti", "dcm2niix", "duckdb", "pyarrow", "prefect",
            "prefect-dask", "distributed")


def median(xs) -> float:
    xs = [float(x) for x in xs]
    return statistics.median(xs) if xs else float("nan")


def wall(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: bool = True) -> dict[str, list[float]]:
    """Wall seconds of each function, ``runs`` rounds, one call of each per round.

    The warm-up round (not recorded) pays imports and first-touch page-cache costs.
    """
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            times[k].append(wall(fn))
    return times


def ratio(num: list[float], den: list[float]) -> float:
    """Median of per-round ratios (both measured in the same round, so under the same load)."""
    return median([a / b for a, b in zip(num, den) if b > 0])


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = float("nan")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(ram_gb, 1), "os": platform.platform(),
            "load_at_start": " / ".join(f"{x:.2f}" for x in load)}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    # a dirty tree means the numbers are for uncommitted code: say so
    out["git commit"] = commit + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")
    return out


class PeriodicSampler:
    """A context manager that calls ``_sample()`` on entry, every ``period`` seconds on a daemon
    thread, and once more on exit (subclasses define ``_sample``)."""

    def __init__(self, period: float):
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, args=(period,), daemon=True)

    def _sample(self) -> None:
        raise NotImplementedError

    def _loop(self, period: float) -> None:
        while not self._stop.wait(period):
            self._sample()

    def __enter__(self):
        self._sample()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()
