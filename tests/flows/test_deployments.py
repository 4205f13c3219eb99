"""deploy/prefect.yaml: every deployment names a flow of the package by module path (so a wheel
installed outside the checkout serves it) and its parameters are valid for that flow's model."""
from __future__ import annotations

from importlib.resources import files

import pytest
import yaml

from mrifoundry.flows import cli

DEPLOYMENTS = yaml.safe_load((files("mrifoundry.deploy") / "prefect.yaml").read_text())["deployments"]
MODELS = {v.flow.replace(":", "."): v.params for v in cli.VERBS if v.flow}


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_entrypoint_and_parameters(dep):
    from prefect import Flow
    from prefect.utilities.importtools import import_object
    module, name = dep["entrypoint"].split(":")
    assert module.startswith("mrifoundry.flows.") and ".py" not in module
    flow = import_object(dep["entrypoint"])
    assert isinstance(flow, Flow)
    model = MODELS[f"{module}.{name}"]
    params = dict(dep.get("parameters") or {})
    # what `prefect deployment run … -p name=value` adds at run time (e.g. dataset_id)
    for field, f in model.model_fields.items():
        if f.is_required() and field not in params:
            params[field] = ["x"] if field.endswith("_ids") else "x"
    if name == "ingest" and not {"bids", "nifti"} & set(params):
        params["bids"] = "x"
    flow.validate_parameters(params)                  # what the worker does before the run
    model(**params)                                   # and the runner's model (unknown keys refused)


def test_cluster_specs_are_package_data():
    from mrifoundry.flows.runners import DEPLOY
    spec = yaml.safe_load((DEPLOY / "slurm.yaml").read_text())
    assert spec["cluster_class"] == "dask_jobqueue.SLURMCluster"
