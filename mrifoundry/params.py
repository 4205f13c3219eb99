"""Parameters of every pipeline: one pydantic model each, the single source of their defaults.

The plain runner in ``tasks/`` takes the model; the Prefect flow of the same name takes its
fields as keyword parameters (its signature is made from the model, ``flows/wrap.py``); the
``mrifoundry`` command makes one verb per model (``flows/cli.py``): ``Field`` descriptions are
the help, defaults are shown. Paths, numbers and switches only — never PHI — because Prefect
stores flow parameters in its database. ``{home}`` in a path expands to MRIFOUNDRY_HOME.
"""
from __future__ import annotations

import datetime as dt
import types
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OUT = Field(None, description="output root (restricted/, research/, state/); default MRIFOUNDRY_OUT, else HOME/out")
RERUN = Literal["missing", "failed", "all"]
RERUN_HELP = "missing: new and failed items; failed: only failed items; all: redo everything"


class Params(BaseModel):
    """Base: unknown parameters are an error (a typo must not silently fall back to a default); a
    tuple or list given as one string is comma-separated (``"0.6,0.2,0.2"``)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _comma_lists(cls, data):
        if isinstance(data, dict):
            for name, f in cls.model_fields.items():
                v = data.get(name)
                if isinstance(v, str) and is_sequence(f.annotation) and name != "nifti_shape":
                    data = {**data, name: [x.strip() for x in v.split(",") if x.strip()]}
        return data

    @field_validator("voxel_size_mm", mode="before", check_fields=False)
    @classmethod
    def _voxel(cls, v):
        return _native(v)


def is_sequence(annotation) -> bool:
    """list[...] or tuple[...], optional or not."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return any(typing.get_origin(a) in (list, tuple) for a in args)


def _shape(v):
    """256x256x128, "256,256,128" or [256, 256, 128] → (256, 256, 128)."""
    if v in (None, "", [], ()):
        return None
    if isinstance(v, str):
        v = v.lower().replace(",", "x").split("x")
    return tuple(int(x) for x in v)


def _native(v):
    """A voxel size of 0 (or "none") keeps the native spacing, like None."""
    return None if v in (0, "0", "none", "native") else v


class CurateParams(Params):
    """``curate``: a folder archive or a PACS → de-identified PNG/NIfTI corpus + catalog."""

    archive: str | None = Field(None, description="folder of DICOM (any layout), 'sample', or a PACS "
                                                  "dicom://AET@host:port?calling=OURAET; default MRIFOUNDRY_ARCHIVE")
    reports: str | None = Field(None, description="report export CSV; none = every study of the archive")
    out: str | None = OUT
    rules: str | None = Field(None, description="report-filter rules YAML (default: the packaged Duke-110K rules)")
    date_start: dt.date | None = Field(dt.date(2016, 1, 1), description="first report date kept")
    date_end: dt.date | None = Field(dt.date(2020, 12, 31), description="last report date kept")
    n_per_protocol: int = Field(150, ge=1, description="exams sampled per protocol (all when fewer)")
    seed: int = Field(0, description="sampling seed")
    min_slices: int = Field(5, ge=1, description="series with fewer slices are not converted")
    voxel_size_mm: float | None = Field(1.0, description="isotropic NIfTI resampling in mm; none keeps native spacing")
    nifti_shape: tuple[int, int, int] | None = Field(None, description="fixed NIfTI shape, e.g. 256x256x128 (Triad)")
    nifti_timepoints: Literal["middle", "all"] = Field(
        "middle", description="4D series: the middle time point (3D corpus), or all as one 4D NIfTI")
    write_png: bool = Field(True, description="write the PNG slices")
    write_nifti: bool = Field(True, description="write the NIfTI volumes")
    rerun: RERUN = Field("missing", description=RERUN_HELP)
    workers: int = Field(2, ge=1, description="concurrent exams (threads or Dask worker processes)")
    batch_size: int = Field(256, ge=1, description="exams submitted at once (bounds memory at Duke scale)")
    qc_per_body_part: int = Field(8, ge=1, description="slices per body part in the QC montage")
    follow_symlinks: bool = Field(False, description="follow symlinks that point outside the archive folder")
    max_file_mb: int = Field(8192, ge=1, description="archive files larger than this are not read (file_too_large)")
    max_container_mb: int = Field(65536, ge=1, description="expansion budget of one zip/tar/gzip, nesting included")
    max_container_ratio: float = Field(100.0, gt=1, description="refuse a container expanding more than this many "
                                                                "times its size, past 32 MiB (zip bombs)")
    phi_audit: bool = Field(True, description="end with the PHI audit of the whole output")
    runner: str = Field("threads", description="threads | dask | dask://host:port | slurm | a cluster YAML "
                                               "(all but threads run through Prefect)")

    @field_validator("nifti_shape", mode="before")
    @classmethod
    def _nifti_shape(cls, v):
        return _shape(v)


class IngestParams(Params):
    """``ingest``: a BIDS dataset or a NIfTI folder → the same catalog as curated DICOM."""

    bids: str | None = Field(None, description="BIDS dataset root (dataset_description.json, sub-*/)")
    nifti: str | None = Field(None, description="folder of NIfTI files; subject = first folder level")
    dataset: str | None = Field(None, description="collection name stored in exams.dataset (default: folder name)")
    out: str | None = OUT
    voxel_size_mm: float | None = Field(1.0, description="isotropic mm; none keeps the native spacing")
    nifti_shape: tuple[int, int, int] | None = Field(None, description="fixed output shape, e.g. 256x256x128")
    body_part: str | None = Field(None, description="body part when the sidecars do not say (e.g. brain)")
    rerun: RERUN = Field("missing", description=RERUN_HELP)
    workers: int = Field(2, ge=1, description="threads (one subject session each at a time)")
    phi_audit: bool = Field(True, description="end with the PHI audit of the whole output")

    @field_validator("nifti_shape", mode="before")
    @classmethod
    def _nifti_shape(cls, v):
        return _shape(v)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.bids is None) == (self.nifti is None):
            raise ValueError("give exactly one of bids=… or nifti=…")
        return self


class DownstreamParams(Params):
    """``ingest-downstream``: a labelled 3D dataset (MSD/nnU-Net, BraTS, images+labels, DICOM-SEG,
    classification CSV) → ``labelled_volumes``."""

    root: str = Field(description="dataset folder, or the classification CSV")
    dataset_id: str = Field(description="the dataset's name in the catalog")
    out: str | None = OUT
    layout: Literal["auto", "msd", "brats", "folder", "dicom-seg", "csv"] = Field("auto", description="folder layout")
    labels: dict | None = Field(None, description='label mapping, {"1": 1, "2": 1} or {"whole_tumor": [1, 2, 4]}')
    strict_labels: bool = Field(False, description="skip cases with values the mapping leaves out")
    voxel_size_mm: float | None = Field(1.0, description="isotropic mm; none keeps native spacing")
    split: tuple[float, float, float] = Field((0.6, 0.2, 0.2), description="train,val,test fractions of patients")
    folds: int | None = Field(5, ge=0, description="k of the per-patient k-fold; 0 or none = no folds")
    seed: int = Field(0, description="split seed")


class Labelled2dParams(Params):
    """``ingest-labelled``: a labelled 2D dataset (NIfTI pairs / MSD / nnU-Net raw, PNG list, mask folder) →
    ``labelled_slices``."""

    root: str = Field(description="nnU-Net/MSD folder (imagesTr/ + labelsTr/), a mask folder (images/ + masks/) "
                                  "or an MRI-CORE PNG list file")
    dataset_id: str = Field(description="the dataset's name in the catalog")
    out: str | None = OUT
    layout: Literal["auto", "nifti-pairs", "png-list", "mask-folder"] = Field("auto", description="input layout")
    labels: dict | None = Field(None, description='label mapping: select/merge {"6": 1, "10": 2} or select+rename '
                                                  '{"liver": [6], "pancreas": [10]}; unlisted values → background')
    strict_labels: bool = Field(False, description="skip cases with values the mapping leaves out")
    split: tuple[float, float, float] = Field((0.6, 0.2, 0.2), description="train,val,test fractions of patients")
    split_file: str | None = Field(None, description="a published split instead: CSV (patient,split) or JSON "
                                                     "{train: [...], val: [...], test: [...]} or nnU-Net "
                                                     "splits_final.json")
    split_fold: int = Field(0, ge=0, description="the fold of an nnU-Net splits_final.json")
    seed: int = Field(0, description="split seed (unused with a split file)")
    axis: int = Field(2, ge=0, le=2, description="NIfTI pairs: slicing axis of the RAS volume (2 = axial)")
    keep_empty: bool = Field(True, description="keep slices whose mask is all background")
    patient_regex: str | None = Field(None, description="PNG layouts: regex on the file name giving the patient "
                                                        "(group 1); default MRI-CORE's rule")


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


# --- the command's tool verbs (no flow): the same shape, so the CLI is made the same way ---------

class SqlParams(Params):
    """``sql``: a read-only query on the research catalog."""

    query: str = Field(description="SQL on the catalog's views (docs/catalog.md)")
    out: str | None = OUT
    format: Literal["table", "csv", "json"] = Field("table", description="output format")
    unrestricted: bool = Field(False, description="lift the research-zone confinement (power users: the query can "
                                                  "then read and write any file, the restricted zone included)")


class OverlapParams(Params):
    """``overlap``: pretraining series (SQL returning series_id) that share patients with a downstream dataset."""

    query: str = Field(description="SQL returning series_id")
    dataset_id: str = Field(description="downstream dataset of the catalog")
    out: str | None = OUT
    sql: bool = Field(False, description="also print the SQL that excludes the overlapping patients")


class ExportBidsParams(Params):
    """``export-bids``: the anatomical volumes of a query as a BIDS dataset."""

    dest: str = Field(description="a new, empty folder")
    out: str | None = OUT
    query: str = Field("SELECT series_id FROM series WHERE status = 'ok'", description="SQL returning series_id")
    name: str = Field("mrifoundry export", description="dataset_description.json Name")
    check: bool = Field(False, description="run bids-validator-deno on the result (exit 1 on an error)")


class SampleParams(Params):
    """``sample``: generate the embedded sample archive."""

    out: str | None = Field(None, description="where (default HOME/sample)")
    seed: int = Field(0, description="generator seed")
    force: bool = Field(False, description="regenerate even if it exists")


class PhiAuditParams(Params):
    """``phi-audit``: search every restricted-zone identifier outside it (exit 1 on a hit)."""

    out: str = Field(description="output root of the curation")
    reports: str | None = Field(None, description="the report export, to also search report-text fragments")


class CatalogDocsParams(Params):
    """``catalog-docs``: write docs/catalog.md from catalog/schema.py."""

    path: str = Field("docs/catalog.md", description="the file to write (relative to the current folder)")
    check: bool = Field(False, description="only compare (exit 1 when out of date)")


class WhereParams(Params):
    """``where``: where this installation keeps its state, rules and deployment files."""
