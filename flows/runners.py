"""Task runners by name, so a deployment picks its scale with one parameter.

``threads`` (default): a thread pool in the flow-run process. ``dask``: a local Dask
cluster of ``workers`` processes. ``dask://host:port`` (or ``tcp://…``): an existing Dask
scheduler. ``slurm``: a dask-jobqueue SLURM cluster from ``deploy/dask/slurm.yaml`` (package data
of ``mrifoundry.deploy``, so an installed wheel has it too). Cluster specs are data; flows never
hard-code them.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import yaml
from prefect.task_runners import ThreadPoolTaskRunner

DEPLOY = Path(str(files("mrifoundry.deploy") / "dask"))


def make_task_runner(spec: str, workers: int):
    """Raises ValueError for an unknown spec."""
    if spec == "threads":
        return ThreadPoolTaskRunner(max_workers=max(1, workers))
    from prefect_dask import DaskTaskRunner
    if spec == "dask":
        # one thread per worker process: the stages are CPU-bound Python
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                              "processes": True, "host": "127.0.0.1",
                                              "dashboard_address": None})
    if spec.startswith(("dask://", "tcp://")):
        return DaskTaskRunner(address="tcp://" + spec.split("://", 1)[1])
    if spec == "slurm" or spec.endswith(".yaml"):
        cfg = yaml.safe_load((DEPLOY / "slurm.yaml" if spec == "slurm" else Path(spec)).read_text())
        return DaskTaskRunner(cluster_class=cfg["cluster_class"], cluster_kwargs=cfg.get("cluster_kwargs", {}),
                              adapt_kwargs=cfg.get("adapt_kwargs"))
    raise ValueError(f"unknown task runner {spec!r}: threads, dask, dask://host:port, slurm or a cluster YAML")
