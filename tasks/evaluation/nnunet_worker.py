"""One nnU-Net v2 repeat in its own process: ``python -m mrifoundry.tasks.evaluation.nnunet_worker SPEC.json``.

Run by :mod:`mrifoundry.tasks.evaluation.nnunet_baseline` with ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results`` set in this process's environment only (nnU-Net
reads them at import) and its output sent to the evaluation's log. Steps, all nnU-Net's own
code: fingerprint + plan (``ExperimentPlanner``, plans ``nnUNetPlans``) + preprocess of the 2D
configuration; the few-shot split written as fold 0 of ``splits_final.json``; training of fold 0
with the named trainer (``epochs`` / ``iterations`` override its budget when given); prediction of
the test images with the final checkpoint, without multiprocessing. Lines starting ``@@`` are
progress for the parent.
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path


def say(text: str) -> None:
    print(f"@@ {text}", flush=True)


def run(spec: dict) -> None:
    import numpy as np
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                       preprocess)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunetv2.configuration import default_num_processes

    ds_id, name = int(spec["dataset_id"]), spec["dataset_name"]
    procs = default_num_processes if spec.get("num_processes") is None else max(int(spec["num_processes"]), 1)
    extract_fingerprints([ds_id], num_processes=procs, check_dataset_integrity=True, clean=True, verbose=False,
                         show_progress_bar=False)
    plan_experiments([ds_id])
    preprocess([ds_id], configurations=("2d",), num_processes=(procs,), verbose=False, show_progress_bar=False)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    # the few-shot split replaces nnU-Net's 5-fold cross-validation: fold 0 = our train / val
    (pre / "splits_final.json").write_text(json.dumps([{"train": spec["train"], "val": spec["val"]}]))
    plans = json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]["2d"]
    say(f"planned: patch {plans['patch_size']}, batch {plans['batch_size']}")

    # nnU-Net does not seed; seeding here makes a CPU run with in-process augmentation repeatable
    random.seed(spec["seed"])
    np.random.seed(spec["seed"] % 2**32)
    torch.manual_seed(spec["seed"])
    device = torch.device(spec["device"])
    if spec.get("workers") is not None:
        # augmentation processes, read when the data loaders are made; set only now because
        # nnU-Net's planner passes the same number to torch.set_num_threads, which refuses 0
        os.environ["nnUNet_n_proc_DA"] = str(spec["workers"])
    trainer = get_trainer_from_args(name, "2d", 0, spec["trainer"], "nnUNetPlans", device=device)
    # the budget is read when training starts (optimiser, poly schedule), so setting it here counts
    if spec.get("epochs"):
        trainer.num_epochs = int(spec["epochs"])
    if spec.get("iterations"):
        trainer.num_iterations_per_epoch = int(spec["iterations"])
    if spec.get("val_iterations"):
        trainer.num_val_iterations_per_epoch = int(spec["val_iterations"])
    say(f"training: {trainer.num_epochs} epochs x {trainer.num_iterations_per_epoch} iterations on {device}")
    trainer.run_training()

    predictor = nnUNetPredictor(device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(trainer.output_folder_base, use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    predictor.predict_from_files_sequential(spec["test_images"], spec["predictions"], save_probabilities=False,
                                            overwrite=True)
    say("predicted")
    Path(spec["done"]).write_text(json.dumps({"epochs": trainer.num_epochs,
                                              "iterations_per_epoch": trainer.num_iterations_per_epoch,
                                              "patch_size": plans["patch_size"], "batch_size": plans["batch_size"],
                                              "results": str(trainer.output_folder_base)}))


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
