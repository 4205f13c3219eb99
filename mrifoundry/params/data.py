"""Getting data in: curation of an archive, NIfTI/BIDS collections, labelled 2D and 3D datasets."""
from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mrifoundry.params.base import OUT, RERUN, RERUN_HELP, Params, _shape

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
    exams_per_task: int = Field(0, ge=0, description="exams one Prefect task takes through the five stages "
                                                     "(0: auto, 1 to 8 by run size; fewer task runs on the server)")
    qc_per_body_part: int = Field(8, ge=1, description="slices per body part in the QC montage")
    review_page: bool = Field(True, description="end with the offline QC review page research/qc/index.html")
    review_volumes: int = Field(2000, ge=0, description="series with a 3D viewer copy in the review page "
                                                        "(outliers first; about 0.5 MB each)")
    follow_symlinks: bool = Field(False, description="follow symlinks that point outside the archive folder")
    max_file_mb: int = Field(8192, ge=1, description="archive files larger than this are not read (file_too_large)")
    max_container_mb: int = Field(65536, ge=1, description="expansion budget of one zip/tar/gzip, nesting included")
    max_container_ratio: float = Field(100.0, gt=1, description="refuse a container expanding more than this many "
                                                                "times its size, past 32 MiB (zip bombs)")
    phi_audit: bool = Field(True, description="end with the PHI audit of the whole output")
    runner: str = Field("threads", description="threads | dask | dask://host:port | slurm (the YAML named by "
                                               "MRIFOUNDRY_SLURM_CLUSTER, else deploy/dask/slurm.yaml) | a cluster YAML "
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
    review_page: bool = Field(True, description="rebuild the offline QC review page research/qc/index.html")
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
