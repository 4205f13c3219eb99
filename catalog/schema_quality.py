"""The quality tables: image-quality metrics of each converted series (written by the curation
``convert``/``catalog`` stages, tasks/curation/quality/) and the review decisions raters import from
the QC page (tasks/curation/review/decisions.py). Re-exported by catalog/schema.py."""
from __future__ import annotations

from mrifoundry.catalog.table import F, I, S, TS, Column, Table

#: (name, description) of every metric column, in tasks/curation/quality/iqm.py::IQM_NAMES order;
#: the formulas are in docs/quality.md
IQM_COLUMNS = (
    ("snr", "MRIQC snr: mean / (sd · √(n/(n−1))) over the foreground; higher is better"),
    ("snr_dietrich", "MRIQC snr_dietrich: foreground mean / (1.4826 · MAD of the air · √(2/(4−π))); higher is better"),
    ("cnr", "MRIQC cnr with the bright and middle intensity classes: |μ_b − μ_m| / √(σ_air² + σ_m² + σ_b²); higher is better"),
    ("cjv", "MRIQC cjv: (σ_b + σ_m) / |μ_b − μ_m|; lower is better"),
    ("efc", "MRIQC efc: normalised entropy of the voxel intensities (ghosting, blur); lower is better"),
    ("fber", "MRIQC fber: median(fg²) / median(air²); null when the air is all zero; higher is better"),
    ("qi1", "MRIQC qi1 (Mortamet 2009): share of air voxels holding artefact signal (robust z > 10, opened); lower is better"),
    ("bright2max", "MRIQC wm2max-style: median of the bright class / p99.95 of the foreground"),
    ("blank_slices", "share of slices along the acquisition's slice axis whose mean is under 10 % of the median slice's (dropped slab)"),
    ("saturated_fraction", "share of foreground voxels at the volume's maximum (clipping)"),
    ("slice_jump", "largest change of the slice mean between adjacent slices / median slice mean (a dropped or bright slab)"),
    ("ghost_ratio", "MRIQC gsr-style: mean over the N/2-shifted foreground along the phase-encoding axis, in the air, / foreground mean; "
                    "null when the phase-encoding direction is unknown"),
)

#: the direction in which a metric is better (the outlier view flags only the worse side)
BETTER = {"snr": "higher", "snr_dietrich": "higher", "cnr": "higher", "cjv": "lower", "efc": "lower",
          "fber": "higher", "qi1": "lower", "bright2max": None, "blank_slices": "lower",
          "saturated_fraction": "lower", "slice_jump": "lower", "ghost_ratio": "lower"}

SERIES_QUALITY = Table(
    "series_quality", "research", ("series_id",),
    "Image-quality metrics of each converted series, computed from its RAS NIfTI (the middle time point of a "
    "4D series) without an atlas: masks from the intensities (Otsu foreground, air beyond a 2-voxel margin, "
    "three multi-Otsu classes). Robust z-scores per scanner and sequence group are in the view series_iqm_z; "
    "outliers in quality_outliers (docs/quality.md).",
    (
        Column("series_id", S, "series (series.series_id)"),
        Column("exam_id", S, "exam of the series"),
        *(Column(name, F, doc) for name, doc in IQM_COLUMNS),
        Column("slab_axis", I, "RAS voxel axis the slab checks run along (0 sagittal, 1 coronal, 2 axial or unknown)"),
        Column("pe_axis", I, "RAS voxel axis of the phase encoding (from the sidecar); null when unknown"),
        Column("foreground_fraction", F, "share of the voxels in the foreground mask"),
        Column("stride", I, "in-plane stride of the voxels measured (1 = all; volumes over 2^19 voxels are read on "
                            "every k-th voxel in plane, every slice kept: docs/quality.md)"),
        Column("thumb_path", S, "three-plane mid-slice PNG (sagittal | coronal | axial) relative to the research root"),
        Column("iqm_seconds", F, "seconds spent on the metrics and the thumbnail"),
        Column("iqm_version", S, "version of the metric definitions (tasks/curation/quality/series.py::IQM_VERSION)"),
    ),
)

REVIEW_DECISIONS = Table(
    "review_decisions", "research", ("series_id", "rater", "decided_at"),
    "Rater decisions from the QC review page (research/qc/index.html), imported with `mrifoundry review import`. "
    "Every import appends; the latest decision per series counts (view series_decisions). training_slices and "
    "training_volumes leave out series whose latest decision is exclude. Curation re-runs do not touch this table.",
    (
        Column("series_id", S, "series (series.series_id)"),
        Column("decision", S, "include, exclude or unsure"),
        Column("note", S, "the rater's note (at most 500 characters)"),
        Column("rater", S, "who decided (as typed in the page)"),
        Column("decided_at", TS, "when the rater decided (from the export)"),
        Column("imported_at", TS, "when the decision was imported"),
        Column("source_file", S, "name of the exported file it came from"),
        Column("run_id", S, "run id of the review page the decision was made on"),
    ),
)
