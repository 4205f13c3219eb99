"""Every catalog table, defined once: column, Arrow type, description (the evaluation statistics
tables, evaluation_repeats and comparisons, in catalog/schema_stats.py, re-exported here).

``docs/catalog.md`` is generated from these definitions (``mrifoundry catalog-docs``) and a
test checks that it is up to date.
"""
from __future__ import annotations

import pyarrow as pa

# Column and Table live in catalog/table.py so that the evaluation-statistics tables
# (catalog/schema_stats.py) can be defined beside this module without an import cycle.
from mrifoundry.catalog.table import B, D, F, I, S, TS, Column, Table  # noqa: F401 - re-exported
from mrifoundry.catalog.schema_stats import COMPARISONS, EVALUATION_REPEATS
from mrifoundry.catalog.schema_quality import REVIEW_DECISIONS, SERIES_QUALITY

EXAMS = Table(
    "exams", "research", ("exam_id",),
    "One row per curated exam (study). Keys are salted pseudonyms; dates are shifted per patient.",
    (
        Column("exam_id", S, "pseudonymous exam id (salted hash of the accession number or StudyInstanceUID)"),
        Column("patient_id", S, "pseudonymous patient id (salted hash of the MRN); same patient, same id"),
        Column("protocol", S, "protocol: the normalised report type, or the cleaned StudyDescription without a report"),
        Column("body_part", S, "body part from the protocol rules or the headers (knee, shoulder, brain …)"),
        Column("study_date", D, "study date shifted by the patient's date offset (Modified Dates option)"),
        Column("modality", S, "modality of the exam (MR)"),
        Column("n_series", I, "series found in the exam, before quality checks"),
        Column("n_series_ok", I, "series that passed the continuity checks and were converted"),
        Column("n_slices", I, "PNG slices written for the exam"),
        Column("source", S, "how the exam was chosen: report (report export + sampling) or archive (every study) for "
                            "curated DICOM; bids or nifti for an ingested collection (mrifoundry ingest)"),
        Column("dataset", S, "ingested collection the exam came from (ingest --dataset); null for curated DICOM"),
        Column("subject_key", S, "ingested exams: salted hash of the collection's own subject label (BIDS sub-<label>), "
                                 "the same for that label in any collection or downstream dataset (overlap check); "
                                 "null for curated DICOM"),
        Column("curated_at", TS, "when the catalog rows of the exam were written"),
        Column("code_version", S, "mrifoundry version and git commit that wrote the rows"),
    ),
)

SERIES = Table(
    "series", "research", ("series_id",),
    "One row per series of a curated exam, converted or rejected (with its reason).",
    (
        Column("series_id", S, "pseudonymous series id (salted hash of the original SeriesInstanceUID, and of the image set when not the main one)"),
        Column("exam_id", S, "exam of the series (exams.exam_id)"),
        Column("image_set", S, "which images of the DICOM series: '' (magnitude/anatomy), phase, real, imaginary, trace (isotropic DWI) or reversed (GE epi_pepolar volumes acquired with reversed phase encoding); each its own row (docs/vendors.md)"),
        Column("status", S, "ok (converted) or rejected"),
        Column("reason", S, "reason code when rejected (see stage_results and docs/ledger.md)"),
        Column("series_description", S, "SeriesDescription after Clean Descriptors (e.g. 'SAG PD FS')"),
        Column("sequence_type", S, "T1, T2, PD, STIR, FLAIR, DWI, DTI, ADC, DIXON, DCE, SWI, BOLD, GRE or OTHER"),
        Column("orientation", S, "axial, coronal, sagittal or oblique (from ImageOrientationPatient)"),
        Column("body_part", S, "body part from BodyPartExamined / descriptions, in the rules vocabulary (knee, lumbar_spine …)"),
        Column("contrast", B, "contrast agent given (ContrastBolusAgent or description)"),
        Column("manufacturer", S, "scanner manufacturer"),
        Column("model", S, "scanner model name"),
        Column("field_strength", F, "MagneticFieldStrength in tesla"),
        Column("repetition_time", F, "TR in ms"),
        Column("echo_time", F, "TE in ms"),
        Column("flip_angle", F, "flip angle in degrees"),
        Column("rows", I, "image rows"),
        Column("cols", I, "image columns"),
        Column("pixel_spacing_row", F, "pixel spacing between rows, mm"),
        Column("pixel_spacing_col", F, "pixel spacing between columns, mm"),
        Column("slice_thickness", F, "SliceThickness, mm"),
        Column("slice_spacing", F, "measured spacing between slice centres, mm"),
        Column("n_slices", I, "slices per time point after localizers/derived images were removed"),
        Column("n_timepoints", I, "time points (1 for 3D; DCE/multi-echo > 1)"),
        Column("transfer_syntax", S, "transfer syntax UID of the stored DICOM"),
        Column("dicom_dir", S, "de-identified DICOM folder, relative to the research root"),
        Column("nifti_path", S, "NIfTI file (RAS, resampled) relative to the research root; null if not converted"),
        Column("nifti_shape", S, "NIfTI shape, e.g. '240x240x80'"),
        Column("nifti_zooms", S, "NIfTI voxel size in mm, e.g. '1.0x1.0x1.0'"),
        Column("nifti_timepoint", I, "time point written to NIfTI (the middle one of a 4D series; null when nifti_timepoints=all wrote every one)"),
        Column("converter", S, "NIfTI converter (dicom2nifti)"),
        Column("converter_version", S, "converter version"),
        Column("conversion_params", S, "JSON of the conversion parameters (voxel size, shape, order, reorientation)"),
        Column("content_sha256", S, "digest of the voxels before resampling (mrifoundry.digest.voxel_sha256: RAS, "
                                    "float32): equal for one image however it is stored; de-duplication and the "
                                    "overlap check"),
        Column("sidecar_path", S, "BIDS-style JSON sidecar beside the NIfTI (phase encoding, multiband, slice "
                                  "times, time points held); .bval/.bvec and _aslcontext.tsv sit beside it when they apply"),
        Column("phase_encoding_direction", S, "BIDS PhaseEncodingDirection in the NIfTI's voxel axes (i, j, k, '-' = "
                                              "reversed); the axis alone when the vendor does not record polarity"),
        Column("multiband_factor", I, "simultaneous-multislice (multiband) factor when the header records it"),
        Column("b_values", S, "distinct diffusion b-values of the series (s/mm², comma-separated); null if not diffusion"),
        Column("asl_context", S, "ASL: label/control/m0scan of every time point in order; null otherwise"),
        Column("bids_entities", S, "ingested BIDS series: JSON of the entities other than sub/ses (datatype, suffix, "
                                   "acq, ce, run …); null otherwise"),
    ),
)

SLICES = Table(
    "slices", "research", ("slice_id",),
    "One row per PNG slice (per-slice min-max normalised to 0..255), MRI-CORE style.",
    (
        Column("slice_id", S, "series_id + '_t' + time point + '_z' + index"),
        Column("series_id", S, "series of the slice (series.series_id)"),
        Column("exam_id", S, "exam of the slice"),
        Column("temporal_index", I, "time point (0 for 3D series)"),
        Column("slice_index", I, "index along the slice normal, 0 = lowest projection of ImagePositionPatient"),
        Column("position_mm", F, "projection of ImagePositionPatient on the slice normal, mm (shifted frame not applied)"),
        Column("png_path", S, "PNG file relative to the research root"),
        Column("width", I, "PNG width (= DICOM Columns)"),
        Column("height", I, "PNG height (= DICOM Rows)"),
        Column("min_value", F, "minimum stored value of the slice (after rescale), mapped to 0"),
        Column("max_value", F, "maximum stored value of the slice (after rescale), mapped to 255"),
    ),
)

STAGE_RESULTS = Table(
    "stage_results", "research", ("item_id", "stage"),
    "The stage ledger: one row per (item, stage). Items are exams, series or single instances.",
    (
        Column("item_id", S, "opaque id of the item (exam_id, series_id, or series_id/instance number)"),
        Column("item_kind", S, "exam, series, instance, or quality (a series' metrics, item <series_id>/iqm)"),
        Column("exam_id", S, "exam the item belongs to"),
        Column("stage", S, "retrieve, deid, continuity, convert or catalog (ingest for collections)"),
        Column("status", S, "done, rejected (data-quality decision) or failed (error; retried on re-run)"),
        Column("reason", S, "reason code (catalog/reasons.py) when rejected or failed"),
        Column("message", S, "short explanation, never containing header values"),
        Column("attempt", I, "how many times the stage ran on this item"),
        Column("started", TS, "start of the last attempt"),
        Column("finished", TS, "end of the last attempt"),
        Column("duration_s", F, "seconds of the last attempt"),
        Column("code_version", S, "mrifoundry version and git commit of the last attempt"),
        Column("run_id", S, "Prefect flow-run id (or 'cli') of the last attempt"),
        Column("outputs", S, "JSON list of outputs relative to the research root"),
    ),
)

REPORTS = Table(
    "reports", "restricted", ("accession_number",),
    "RESTRICTED. The report export after filtering, with the decision for each report. Holds PHI.",
    (
        Column("accession_number", S, "accession number (PHI)"),
        Column("patient_mrn", S, "medical record number (PHI)"),
        Column("report_date", D, "report date (real)"),
        Column("modality", S, "modality of the report"),
        Column("report_type", S, "report type as exported"),
        Column("protocol", S, "normalised protocol derived from the report type"),
        Column("body_part", S, "body part from the protocol rules"),
        Column("decision", S, "kept, not_mr, outside_window, excluded_protocol, duplicate or unparseable"),
        Column("rule", S, "exclusion rule that matched (excluded_protocol)"),
        Column("sampled", B, "chosen by per-protocol sampling"),
        Column("exam_id", S, "pseudonymous exam id (links to the research catalog)"),
    ),
)

MODELS = Table(
    "models", "research", ("model_id",),
    "One row per pretraining run (flow pretrain): what it trained on and where its checkpoints are.",
    (
        Column("model_id", S, "run name (OUT/research/models/<model_id>)"),
        Column("recipe", S, "recipe name (mri-core, mae, brainfound, triad, brainsegfounder, prism …; models/recipes.py)"),
        Column("objective", S, "dinov2, mae, triad, brainsegfounder or prism"),
        Column("arch", S, "backbone configuration (vit_b16, vit_tiny, swin_b_v2, swin_b, triad_unet …)"),
        Column("init", S, "initialisation: sam (from a SAM image-encoder checkpoint), random, or stage 1 (<model_id>)"),
        Column("query", S, "SQL that chose the training slices, volumes or (BrainFound) brain series"),
        Column("n_slices", I, "training items: slices, contrast stacks (BrainFound) or volumes (volume recipes); "
               "one epoch = every item once"),
        Column("epochs", I, "epochs trained so far"),
        Column("iterations", I, "optimizer steps trained so far"),
        Column("world_size", I, "DDP processes"),
        Column("final_loss", F, "mean total loss over the last logged window"),
        Column("images_per_s", F, "training throughput, all ranks: global-crop images per second (slice recipes) "
               "or volumes per second (volume recipes)"),
        Column("checkpoint_path", S, "latest checkpoint, relative to the research root: the teacher in the MRI-CORE "
               "layout (slice recipes) or the encoder in the method's published layout (volume recipes)"),
        Column("loss_curve_path", S, "loss-curve PNG relative to the research root"),
        Column("finished_at", TS, "when the run (or its last resume) ended"),
        Column("code_version", S, "mrifoundry version and git commit"),
    ),
)

FEATURE_SETS = Table(
    "feature_sets", "research", ("feature_set",),
    "One row per feature extraction (flow extract-features): which model embedded which slices or volumes.",
    (
        Column("feature_set", S, "name of the feature set (OUT/research/features/<feature_set>/)"),
        Column("model", S, "zoo entry (models/zoo.py): sam-vit-b, medsam, mri-core, dinov2-vit-b, random"),
        Column("weights", S, "weights file name (no directory) or 'random'"),
        Column("weights_sha256", S, "SHA-256 of the weights file (first 16 hex digits)"),
        Column("image_size", I, "input size the slices (or volumes, per side) were resized to"),
        Column("dim", I, "feature dimension"),
        Column("pool", S, "pooling of the patch features: mean or cls (slices); multiscale (volumes: every "
               "scale's global average, concatenated)"),
        Column("unit", S, "what one vector embeds: slice (table features) or volume (table volume_features)"),
        Column("query", S, "SQL that chose the slices or volumes"),
        Column("n_slices", I, "items embedded: slices, or volumes when unit = 'volume'"),
        Column("patch_grids", B, "patch grids written as .npy shards"),
        Column("created_at", TS, "when the extraction finished"),
        Column("code_version", S, "mrifoundry version and git commit"),
    ),
)

FEATURES = Table(
    "features", "research", ("feature_set", "slice_id"),
    "One row per (feature set, slice): the pooled embedding; patch grids, when written, are in .npy shards.",
    (
        Column("feature_set", S, "feature set (feature_sets.feature_set)"),
        Column("slice_id", S, "slice (slices.slice_id)"),
        Column("series_id", S, "series of the slice"),
        Column("exam_id", S, "exam of the slice"),
        Column("embedding", pa.list_(pa.float32()), "pooled feature vector"),
        Column("grid_path", S, "patch-grid shard (.npy, [n, D, h, w]) relative to the research root; null if none"),
        Column("grid_index", I, "row of this slice in its shard"),
    ),
)

VOLUME_FEATURES = Table(
    "volume_features", "research", ("feature_set", "series_id"),
    "One row per (feature set, volume) of a volume encoder (triad-*, brainsegfounder, prism): the pooled "
    "embedding of the series' NIfTI, its whole field of view resized to image_size per side.",
    (
        Column("feature_set", S, "feature set (feature_sets.feature_set)"),
        Column("series_id", S, "series (series.series_id) whose NIfTI was embedded"),
        Column("exam_id", S, "exam of the series"),
        Column("embedding", pa.list_(pa.float32()), "pooled feature vector"),
    ),
)

DATASETS = Table(
    "datasets", "research", ("dataset_id",),
    "One row per labelled downstream dataset: 2D segmentation slices (tasks/ingest/labelled2d.py) or 3D "
    "segmentation / classification volumes (tasks/ingest/labelled3d/).",
    (
        Column("dataset_id", S, "name of the dataset (OUT/research/labelled/<dataset_id>/)"),
        Column("source", S, "input kind: nifti-pairs (imagesTr/labelsTr), png-list (MRI-CORE list file), "
                            "mni152-wm, phantom; msd, brats, image-folder, dicom-seg, classification-csv (3D)"),
        Column("task", S, "segmentation (2D slices in labelled_slices), segmentation-3d or classification "
                          "(volumes in labelled_volumes)"),
        Column("root", S, "folder or list file it was ingested from (a path; public/de-identified data only)"),
        Column("n_patients", I, "patients (cases) ingested, skipped cases excluded"),
        Column("n_slices", I, "2D slices ingested (labelled_slices rows); 0 for a volume dataset"),
        Column("n_volumes", I, "volumes ingested (labelled_volumes rows); 0 for a slice dataset"),
        Column("channels", S, "JSON list of the image channels' names (MSD modality, BraTS t1/t1ce/t2/flair); "
                              "null for single-channel slices"),
        Column("label_names", S, "JSON object {label value: name}, e.g. {\"0\": \"background\", \"1\": \"wm\"}"),
        Column("nested_regions", B, "label values are nested regions (a {name: [values]} mapping, outermost "
                                    "first, e.g. BraTS WT ⊇ TC ⊇ ET): value v stands for 'label ≥ v', and 3D "
                                    "fine-tuning scores each region that way"),
        Column("split_seed", I, "seed of the patient-level train/val/test split; null when it was imported"),
        Column("split_source", S, "'seeded' (drawn with split_seed), or the imported split file: '<file name> "
                                  "sha256:<prefix>' (2D: --split-file)"),
        Column("label_mapping", S, "JSON of the label mapping applied to every mask ({\"lut\": {source value: "
                                   "output value}, \"strict\": …}); null when the labels were kept as they were"),
        Column("created_at", TS, "when the ingest finished"),
        Column("code_version", S, "mrifoundry version and git commit"),
    ),
)

LABELLED_SLICES = Table(
    "labelled_slices", "research", ("dataset_id", "slice_id"),
    "One row per 2D slice of a labelled dataset: image PNG (per-slice min-max) and uint8 label mask PNG.",
    (
        Column("dataset_id", S, "dataset (datasets.dataset_id)"),
        Column("slice_id", S, "patient_id + '_z' + slice index, unique within the dataset"),
        Column("patient_id", S, "opaque case id from the public dataset's file name (NIfTI case stem or the "
                                "png-list rule); never an MRN"),
        Column("split", S, "train, val or test; assigned per patient (seeded), so a patient is in one split"),
        Column("slice_index", I, "index along the slicing axis of the RAS volume (png-list: order in the list)"),
        Column("image_path", S, "image PNG (uint8, min-max per slice) relative to the research root"),
        Column("mask_path", S, "mask PNG (uint8 label values) relative to the research root"),
        Column("width", I, "PNG width"),
        Column("height", I, "PNG height"),
        Column("spacing_x", F, "pixel spacing along the width, mm (NIfTI header); null for PNG input"),
        Column("spacing_y", F, "pixel spacing along the height, mm (NIfTI header); null for PNG input"),
        Column("slice_thickness", F, "voxel size along the slicing axis, mm; null for PNG input"),
        Column("has_foreground", B, "the mask has a non-zero pixel"),
        Column("foreground_fraction", F, "fraction of non-zero mask pixels"),
    ),
)

LABELLED_VOLUMES = Table(
    "labelled_volumes", "research", ("dataset_id", "case_id"),
    "One row per case of a 3D downstream dataset: the image NIfTI (RAS, channels on the 4th axis) with its label "
    "map (segmentation-3d) or its class (classification).",
    (
        Column("dataset_id", S, "dataset (datasets.dataset_id)"),
        Column("case_id", S, "case name from the public dataset (file stem, folder or CSV image), made safe; "
                             "unique within the dataset"),
        Column("patient_id", S, "patient of the case (the CSV's patient column, else the case id); splits and "
                                "folds are drawn per patient"),
        Column("subject_key", S, "salted hash of the patient label, as exams.subject_key (overlap check)"),
        Column("split", S, "train, val or test; per patient, seeded"),
        Column("fold", I, "cross-validation fold 0..k-1 of the patient (seeded, k = the ingest's folds)"),
        Column("image_path", S, "image NIfTI (RAS; float32 or int16; [X, Y, Z] or [X, Y, Z, C]) relative to the "
                                "research root"),
        Column("label_path", S, "label map NIfTI (uint8, the image's grid) relative to the research root; null for "
                                "classification"),
        Column("class_label", S, "class of the case (classification); null for segmentation"),
        Column("n_channels", I, "image channels (C)"),
        Column("shape", S, "spatial shape X x Y x Z of the written image, e.g. '240x240x155'"),
        Column("zooms", S, "voxel size in mm of the written image, e.g. '1x1x1' (as series.nifti_zooms)"),
        Column("label_values", S, "JSON list of the label values present in the case's label map, after the "
                                  "ingest's label mapping; null for classification"),
        Column("content_sha256", pa.list_(pa.string()), "voxel digest of each source channel before resampling "
                                                        "(mrifoundry.digest.voxel_sha256), as series.content_sha256"),
        Column("source_format", S, "format the case was read from: nifti, mha, nrrd, dicom, dicom-seg"),
    ),
)

EVALUATIONS = Table(
    "evaluations", "research", ("eval_id", "metric"),
    "One row per (evaluation run, metric): linear probing, zero-shot and few-shot segmentation, FRD, 3D "
    "fine-tuning and classification.",
    (
        Column("eval_id", S, "evaluation run name"),
        Column("kind", S, "linear-probe, zero-shot, few-shot, frd, finetune-3d or classify-3d"),
        Column("model", S, "zoo entry, or a pretrain run's model_id"),
        Column("weights_sha256", S, "SHA-256 prefix of the weights file, or 'random'"),
        Column("dataset", S, "labelled dataset_id, or the SQL that chose the slices"),
        Column("metric", S, "metric name, e.g. accuracy, dice_2d, dice_3d, nsd_3d, dice_k16, frd; finetune-3d: "
                            "dice_<label value>, nsd_<label value>, dice_mean, nsd_mean (a label-fraction sweep "
                            "adds @f<fraction>); classify-3d: auroc, accuracy, balanced_accuracy"),
        Column("value", F, "metric value; with repeats (evaluation_repeats rows of this eval_id and metric) "
                            "their mean over the finite values, recomputable from those rows"),
        Column("std", F, "sample standard deviation (ddof 1) over the finite repeat values of "
                          "evaluation_repeats when the evaluation has repeats; null for a single run or one "
                          "finite repeat"),
        Column("n", I, "items the metric is computed over (slices, patients or images); few-shot: repeats; "
                        "a repeated probe or zero-shot: the first repeat's (per repeat: evaluation_repeats.n)"),
        Column("details", S, "JSON: parameters and per-item results"),
        Column("picture_path", S, "PNG (confusion matrix, overlays, curves) relative to the research root; null if none"),
        Column("created_at", TS, "when the evaluation finished"),
        Column("code_version", S, "mrifoundry version and git commit"),
    ),
)

RESEARCH_TABLES = (EXAMS, SERIES, SLICES, STAGE_RESULTS, SERIES_QUALITY)
#: written by downstream flows (pretrain, extract-features), not by curation
DERIVED_TABLES = (MODELS, FEATURE_SETS, FEATURES, VOLUME_FEATURES, DATASETS, LABELLED_SLICES, LABELLED_VOLUMES,
                  EVALUATIONS, EVALUATION_REPEATS, COMPARISONS, REVIEW_DECISIONS)
ALL_TABLES = RESEARCH_TABLES + DERIVED_TABLES + (REPORTS,)
BY_NAME = {t.name: t for t in ALL_TABLES}


def empty_table(table: Table) -> pa.Table:
    return table.schema.empty_table()


def to_arrow(table: Table, rows: list[dict]) -> pa.Table:
    """Rows (dicts) → an Arrow table with exactly the table's columns and types.

    Raises:
        KeyError: a row has a column the table does not define (catches typos early).
    """
    names = set(table.names)
    for r in rows:
        extra = set(r) - names
        if extra:
            raise KeyError(f"{table.name}: unknown columns {sorted(extra)}")
    cols = {c.name: [r.get(c.name) for r in rows] for c in table.columns}
    return pa.Table.from_pydict(cols, schema=table.schema)


def render_markdown() -> str:
    """The column reference of ``docs/catalog.md``."""
    out = []
    for t in ALL_TABLES:
        out.append(f"### `{t.name}` ({t.zone})\n\n{t.description} Key: `{', '.join(t.key)}`.\n")
        out.append("| column | type | description |\n|---|---|---|")
        out += [f"| `{c.name}` | {c.type} | {c.description} |" for c in t.columns]
        out.append("")
    return "\n".join(out)
