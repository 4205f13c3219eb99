"""Task runners by name, so a deployment picks its scale with one parameter.

``threads`` (default): a thread pool in the flow-run process. ``dask``: a local Dask
cluster of ``workers`` processes. ``dask://host:port`` (or ``tcp://…``): an existing Dask
scheduler. ``slurm``: a dask-jobqueue SLURM cluster from the site's cluster YAML
(``MRIFOUNDRY_SLURM_CLUSTER``) or else ``deploy/dask/slurm.yaml`` (package data of
``mrifoundry.deploy``, so an installed wheel has it too). ``path/to/cluster.yaml``: that file.
Cluster specs are data; flows never hard-code them.
"""
from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import yaml
from prefect.task_runners import ThreadPoolTaskRunner

DEPLOY = Path(str(files("mrifoundry.deploy") / "dask"))
#: environment variable naming the site's cluster YAML that ``runner=slurm`` reads
SLURM_CLUSTER_ENV = "MRIFOUNDRY_SLURM_CLUSTER"


def cluster_yaml(spec: str) -> Path:
    """The cluster YAML of ``spec`` (``slurm`` or a path; ``{home}`` → MRIFOUNDRY_HOME)."""
    from mrifoundry.settings import expand_home
    if spec == "slurm":
        site = os.environ.get(SLURM_CLUSTER_ENV)
        return Path(expand_home(site)) if site else DEPLOY / "slurm.yaml"
    return Path(expand_home(spec))


def _expand(v, home: str):
    """``{home}`` in every string of the spec (log_directory …); ``$VAR`` is left to the job's shell."""
    if isinstance(v, dict):
        return {k: _expand(x, home) for k, x in v.items()}
    if isinstance(v, list):
        return [_expand(x, home) for x in v]
    return v.replace("{home}", home) if isinstance(v, str) else v


def load_cluster_spec(spec: str) -> dict:
    """cluster_class, cluster_kwargs and adapt_kwargs of a cluster YAML.

    Raises:
        ValueError: the file is missing or has no ``cluster_class``.
    """
    path = cluster_yaml(spec)
    if not path.is_file():
        raise ValueError(f"cluster YAML {path} not found (runner={spec!r}"
                         + (f", {SLURM_CLUSTER_ENV}" if spec == "slurm" and os.environ.get(SLURM_CLUSTER_ENV) else "")
                         + ")")
    from mrifoundry.settings import Settings
    cfg = _expand(yaml.safe_load(path.read_text()) or {}, str(Settings().home))
    if not cfg.get("cluster_class"):
        raise ValueError(f"cluster YAML {path} has no cluster_class")
    return cfg


def make_task_runner(spec: str, workers: int):
    """Raises ValueError for an unknown spec or an unusable cluster YAML."""
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
    if spec == "slurm" or spec.endswith((".yaml", ".yml")):
        cfg = load_cluster_spec(spec)
        return DaskTaskRunner(cluster_class=cfg["cluster_class"], cluster_kwargs=cfg.get("cluster_kwargs") or {},
                              adapt_kwargs=cfg.get("adapt_kwargs"))
    raise ValueError(f"unknown task runner {spec!r}: threads, dask, dask://host:port, slurm or a cluster YAML")
