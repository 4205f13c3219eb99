"""Pretraining and every evaluation: the model choice they share, then one model per pipeline."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from mrifoundry.params.base import OUT, Params

class ModelChoice(Params):
    """A model: a zoo entry with local weights (none = random init), or a pretrain run of the catalog."""

    model: str = Field("mri-core", description="zoo entry: sam-vit-b | medsam | mri-core | dinov2-vit-b | random | "
                                               "triad-unet | triad-swin | brainsegfounder | prism")
    weights: str | None = Field(None, description="local weights file (none: random init)")
    arch: str | None = Field(None, description="architecture preset override, e.g. vit_tiny, swin_tiny")
    pretrained: str | None = Field(None, description="a model_id of the catalog's models table (a pretrain run) "
                                                     "instead of model/weights")


class PretrainParams(Params):
    """``pretrain``: a catalog query → a pretrained encoder (OUT/research/models/RUN/)."""

    out: str | None = OUT
    query: str | None = Field(None, description="SQL on the catalog; default per recipe (training slices, converted "
                                                "volumes, paired volumes for PRISM, brain series for BrainFound)")
    recipe: str = Field("mri-core", description="mri-core | mae | brainfound | triad | triad-unet | brainsegfounder "
                                                "| prism (each also -tiny)")
    init_weights: str | None = Field(None, description="local SAM (init=sam) or DINOv2 (init=dinov2) checkpoint")
    run_name: str | None = Field(None, description="the run's model_id (default from recipe, query, overrides); "
                                                   "the same name resumes the run")
    nproc: int = Field(1, ge=1, description="DDP processes (torchrun): GPUs, or CPU with gloo")
    resume: bool = Field(True, description="resume an existing train state of the run")
    overrides: dict | None = Field(None, description='recipe fields, e.g. {"epochs": 2, "batch_size": 64}')
    stage2_query: str | None = Field(None, description="BrainSegFounder: the second stage's volumes (<run>-stage2)")
    exclude_overlap: list[str] | None = Field(None, description="downstream dataset ids whose patients are dropped "
                                                                "from the query (it must return series_id)")


class FeaturesParams(ModelChoice):
    """``extract-features``: embed catalog slices (or volumes) with a model → features tables."""

    out: str | None = OUT
    query: str | None = Field(None, description="SQL returning slice_id (slice models; default every training slice) "
                                                "or series_id (volume encoders; default every converted volume)")
    image_size: int | None = Field(None, description="input size override")
    feature_set: str | None = Field(None, description="name of the feature set (default: the model or run name)")
    batch_size: int = Field(32, ge=1, description="images per forward pass")
    patch_grids: bool = Field(False, description="also store patch-token grids (zero-shot)")
    pool: Literal["mean", "cls"] = Field("mean", description="token pooling")


class ProbeParams(ModelChoice):
    """``linear-probe``: patient-level 60:40 linear probing of frozen features."""

    out: str | None = OUT
    query: str | None = Field(None, description="SQL returning patient_id, label and png_file (slice models) or "
                                                "nifti_file (volume models); default: body part / sequence type")
    image_size: int | None = Field(None, description="input size override")
    eval_id: str | None = Field(None, description="evaluation id (default probe-MODEL)")
    epochs: int = Field(100, ge=1, description="probe training epochs")
    seed: int = Field(0, description="split and init seed")
    repeats: int = Field(3, ge=1, description="repeated 60:40 splits, split and init seed seed+r (evaluation_repeats)")


class ZeroShotParams(ModelChoice):
    """``zero-shot``: segmentation of a labelled dataset by k-means over patch features."""

    dataset_id: str = Field(description="labelled dataset of the catalog")
    out: str | None = OUT
    model: str = Field("mri-core", description="zoo entry (sam-vit-b | medsam | mri-core | dinov2-vit-b | random), "
                                               "or raw-pixels: the k-means baseline on pixel intensities")
    split: str = Field("test", description="which split to score")
    k_values: list[int] = Field([4, 8, 16, 32, 64, 128], description="k of k-means, each scored")
    image_size: int | None = Field(None, description="input size override")
    eval_id: str | None = Field(None, description="evaluation id (default zeroshot-MODEL-DATASET)")
    seed: int = Field(0, description="k-means seed")
    repeats: int = Field(3, ge=1, description="k-means runs, seed seed+r each (evaluation_repeats)")


class FewShotParams(ModelChoice):
    """``few-shot``: MRI-CORE's few-shot SAM segmentation (5 training + 5 validation slices; R repeats)."""

    dataset_id: str = Field(description="labelled dataset of the catalog")
    out: str | None = OUT
    model: str = Field("sam-vit-b", description="SAM-family zoo entry: sam-vit-b | medsam | mri-core | random")
    preset: Literal["mri-core", "tiny"] = Field("mri-core", description="configuration preset")
    overrides: dict | None = Field(None, description='other config fields, e.g. {"repeats": 3}')
    eval_id: str | None = Field(None, description="evaluation id (default fewshot-MODEL-DATASET[-MODE])")
    sam_checkpoint: str | None = Field(None, description="local SAM checkpoint (sam_vit_b_01ec64.pth layout): its "
                                                         "prompt encoder and mask decoder are loaded ({home} expands)")
    random_decoder: bool = Field(False, description="allow a random prompt encoder + mask decoder (no sam_checkpoint)")
    mode: Literal["adapter", "lora", "full"] = Field("adapter", description="adapter: MRI-CORE's adapters; lora: "
                                                     "finetune-SAM's LoRA r=4 on q,v; full: every parameter")


class NnunetParams(Params):
    """``nnunet-baseline``: nnU-Net v2 (own planning, preprocessing, augmentation; 2D) on few-shot's split."""

    dataset_id: str = Field(description="labelled dataset of the catalog")
    out: str | None = OUT
    k_patients: int = Field(5, ge=1, description="training patients (one foreground slice each), as few-shot")
    n_val_patients: int = Field(5, ge=0, description="validation patients (all foreground slices), as few-shot")
    seed: int = Field(0, description="repeat r draws the split with seed+r, as few-shot")
    repeats: int = Field(10, ge=1, le=999, description="repeats (one nnU-Net dataset and training each)")
    image_size: int = Field(256, ge=16, description="slices exported and scored at this size (few-shot's out_size)")
    trainer: str = Field("nnUNetTrainer", description="nnU-Net trainer class, e.g. nnUNetTrainer_5epochs")
    epochs: int | None = Field(None, ge=1, description="epochs (default: the trainer's; nnUNetTrainer 1000)")
    iterations_per_epoch: int | None = Field(None, ge=1, description="iterations per epoch (default: the trainer's)")
    val_iterations_per_epoch: int | None = Field(None, ge=1, description="validation iterations per epoch")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: cuda when available")
    workers: int | None = Field(None, ge=0, description="nnU-Net's worker processes (0: in-process augmentation)")
    eval_id: str | None = Field(None, description="evaluation id (default fewshot-nnunet-v2-DATASET)")


class FrdParams(Params):
    """``frd``: FRDv1 (frd-score) of labelled datasets against the pretraining slices."""

    dataset_ids: list[str] = Field(description="labelled datasets, each compared with the reference")
    out: str | None = OUT
    reference_sql: str = Field("SELECT png_file FROM training_slices", description="SQL returning the reference PNGs")
    n: int = Field(200, ge=2, description="images per side")
    seed: int = Field(0, description="sampling seed")
    workers: int = Field(2, ge=1, description="feature-extraction processes")
    eval_id: str = Field("frd", description="evaluation id")


class CompareParams(Params):
    """``compare``: a baseline model's evaluations vs the others, paired by repeat → ``comparisons``."""

    baseline: str = Field(description="model label of the baseline (evaluations.model)")
    out: str | None = OUT
    metrics: list[str] | None = Field(None, description="metrics to compare (default: every metric with repeats)")
    eval_ids: list[str] | None = Field(None, description="evaluations to consider (default: all)")
    n_boot: int = Field(10000, ge=100, description="bootstrap resamples of the CI")
    ci_method: Literal["percentile", "BCa"] = Field("percentile", description="bootstrap CI method")
    seed: int = Field(0, description="bootstrap seed")


class TransferParams(Params):
    """``transfer-analysis``: few-shot gain of model A over B per dataset against FRD (MRI-CORE fig. 4)."""

    model_a: str = Field(description="model label of the few-shot evaluations to compare")
    model_b: str = Field(description="baseline model label")
    out: str | None = OUT
    frd_eval_id: str = Field("frd", description="the FRD evaluation to read")
    metric: str = Field("test_dsc_3d", description="few-shot metric")
    eval_id: str | None = Field(None, description="evaluation id (default transfer-A-vs-B)")


class EpochSweepParams(Params):
    """``epoch-sweep``: every saved checkpoint of a slice pretrain run scored by linear probing; the best named."""

    pretrained: str = Field(description="the pretrain run (models.model_id)")
    out: str | None = OUT
    query: str | None = Field(None, description="probe query (default: body part of training slices)")
    probe_epochs: int = Field(100, ge=1, description="probe training epochs")
    repeats: int = Field(3, ge=1, description="probe splits per checkpoint (seeds seed, seed+1, …)")
    seed: int = Field(0, description="first split seed")
    eval_id: str | None = Field(None, description="prefix of the rows' eval_id (default sweep-RUN)")


class Volume3dParams(ModelChoice):
    """What the 3D fine-tuning and classification share."""

    dataset_id: str = Field(description="labelled_volumes dataset of the catalog (ingest-downstream)")
    out: str | None = OUT
    model: str = Field("brainsegfounder", description="triad-unet | triad-swin | brainsegfounder | prism")
    iterations: int | None = Field(None, ge=1, description="training iterations (default: the preset's)")
    roi: int | None = Field(None, ge=8, description="training crop edge in voxels (default: the preset's)")
    lr: float | None = Field(None, gt=0, description="learning rate (default: the preset's)")
    encoder_lr: float | None = Field(None, ge=0, description="encoder learning rate (default: the preset's)")
    seed: int | None = Field(None, description="seed (default: the preset's)")
    label_fractions: list[float] | None = Field(None, description="sweep over shares of the training patients, "
                                                                  "e.g. 0.1,0.25,1")
    preset: Literal["default", "tiny"] = Field("default", description="configuration preset")
    overrides: dict | None = Field(None, description='other config fields, e.g. {"overlap": 0.25}')
    eval_id: str | None = Field(None, description="evaluation id")


class Finetune3dParams(Volume3dParams):
    """``finetune-3d``: a volume encoder + SwinUNETR/UNETR decoder on a labelled 3D dataset."""

    decoder: Literal["swinunetr", "unetr"] | None = Field(None, description="decoder (default: the preset's)")
    freeze: bool | None = Field(None, description="train the decoder only (default: the preset's)")
    folds: int | None = Field(None, ge=0, description="k-fold over the data's patient folds; 0/unset: train→test split")
    val_every: int | None = Field(None, ge=0, description="validate every n iterations, test the best (0: the last)")


class Classify3dParams(Volume3dParams):
    """``classify-3d``: k-fold classification of whole volumes."""

    mode: Literal["finetune", "linear"] | None = Field(None, description="fine-tune or linear probe "
                                                                         "(default: the preset's)")


class DemoEvalParams(Params):
    """``demo-eval``: every evaluation on the demo catalog and the labelled demo tasks → a report."""

    out: str = Field("{home}/demo", description="output root of the demo curation")
