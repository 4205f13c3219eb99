"""Recipes: the model side (models/recipes.py) and the run control (tasks/pretraining/recipes.py)."""
from __future__ import annotations

import dataclasses

import pytest

from mrifoundry.models import recipes as model_recipes
from mrifoundry.models.recipes import PretrainConfig, VolumeConfig
from mrifoundry.tasks.pretraining.recipes import RECIPES, RunControl, SliceRun, VolumeRun, recipe

RUN_FIELDS = {f.name for f in dataclasses.fields(RunControl)} | {"record_indices", "cache_volumes"}


def test_model_configs_hold_no_run_control():
    for cls in (PretrainConfig, VolumeConfig):
        assert not RUN_FIELDS & {f.name for f in dataclasses.fields(cls)}


def test_every_model_recipe_is_run_with_its_run_control():
    assert list(RECIPES) == list(model_recipes.RECIPES)
    for name, run in RECIPES.items():
        model = model_recipes.RECIPES[name]
        assert isinstance(run, SliceRun if model.kind == "slices" else VolumeRun) and isinstance(run, type(model))
        assert all(getattr(run, f.name) == getattr(model, f.name) for f in dataclasses.fields(model))
        assert run.num_workers == (0 if name.endswith("-tiny") else 8)
    assert RECIPES["mri-core"].checkpoint_every == 1000 and RECIPES["triad"].checkpoint_every == 500


def test_overrides_take_model_and_run_keys_and_survive_json():
    cfg = recipe("mri-core-tiny", epochs=2, batch_size=64, max_iterations=3, weight_decay=[0.1, 0.2])
    assert (cfg.epochs, cfg.batch_size, cfg.max_iterations, cfg.weight_decay) == (2, 64, 3, (0.1, 0.2))
    assert SliceRun.from_dict(cfg.to_dict()) == cfg
    v = recipe("prism-tiny", cache_volumes=False, lr=1e-3)
    assert VolumeRun.from_dict(v.to_dict()) == v and not v.cache_volumes
    with pytest.raises(ValueError, match="unknown pretraining options"):
        recipe("triad", record_indices=True)       # a slice-only run option
    with pytest.raises(KeyError, match="unknown recipe"):
        recipe("nope")
