"""Reason codes of the stage ledger: one code per distinct cause, documented here only.

``rejected`` codes are data-quality decisions (a re-run does not retry them);
``failed`` codes are errors (``rerun=failed`` retries them).
"""
from __future__ import annotations

# code: (stage, status, description)
REASONS: dict[str, tuple[str, str, str]] = {
    # retrieve
    "accession_not_found": ("retrieve", "rejected", "the archive holds no study with this accession number"),
    "archive_unreachable": ("retrieve", "failed", "the archive could not be reached (folder missing, PACS down)"),
    "unattributed_file": ("retrieve", "rejected", "an archive file that is not DICOM or has no StudyInstanceUID, in a folder without a study: nothing curates it; its path is in restricted/unattributed_files.csv"),
    "special_file": ("retrieve", "rejected", "an archive entry that is not a regular file (FIFO, socket, device, or a symlink to one): never opened"),
    "outside_archive": ("retrieve", "rejected", "a symlink whose target lies outside the archive folder: not followed (curate --follow-symlinks opts in)"),
    "file_too_large": ("retrieve", "rejected", "an archive file larger than max_file_mb: not read"),
    "unreadable_source": ("retrieve", "rejected", "an archive file or folder that cannot be read (permission denied, I/O error, vanished while indexing)"),
    "container_refused": ("retrieve", "rejected", "a zip/tar/gzip whose expansion exceeds the budget (absolute cap or compression ratio: a zip bomb) or nests too deep; nothing of it is curated"),
    "container_empty": ("retrieve", "rejected", "a zip/tar/gzip that opens but holds no non-blank member (e.g. a gzip of zeros)"),
    "container_unreadable": ("retrieve", "rejected", "a file with a container suffix (.zip/.tar/.tgz/.gz) that does not open as one, and is not DICOM either"),
    "retrieve_error": ("retrieve", "failed", "an unexpected error while fetching the exam"),
    "pacs_unreachable": ("retrieve", "failed", "no association with the PACS: connection refused, timed out or PACS busy (after retries)"),
    "association_rejected": ("retrieve", "failed", "the PACS rejected the association: wrong AE title or our AE not allowed"),
    "transfer_incomplete": ("retrieve", "failed", "fewer instances arrived than the PACS counted, or the transfer was cut (after retries); a re-run resumes"),
    # deid
    "unreadable_file": ("deid", "rejected", "a file is not parseable DICOM; its series is dropped"),
    "non_image_object": ("deid", "rejected", "a DICOM object without pixel data (SR, PR, KO …) is not copied"),
    "burned_in_annotation": ("deid", "rejected", "BurnedInAnnotation=YES or a secondary capture: pixels may show PHI"),
    "multiframe_truncated": ("deid", "rejected", "a mosaic or multi-frame object whose pixel data is cut short: the file is dropped (the series, when nothing else is left)"),
    "multiframe_undecodable": ("deid", "rejected", "a mosaic or multi-frame object whose pixels cannot be decoded: the file is dropped (the series, when nothing else is left)"),
    "multiframe_no_geometry": ("deid", "rejected", "a mosaic without its CSA slice count/normal, or frames without plane position/orientation: no volume can be placed"),
    "mosaic_grid_mismatch": ("deid", "rejected", "a Siemens mosaic whose size is not a multiple of its tile grid (resized or damaged): tiles cannot be placed"),
    "deid_error": ("deid", "failed", "an unexpected error while de-identifying"),
    # continuity (series level)
    "non_mr_modality": ("continuity", "rejected", "Modality is not MR"),
    "truncated_file": ("continuity", "rejected", "pixel data shorter than Rows×Columns×BitsAllocated requires"),
    "undecodable_pixels": ("continuity", "rejected", "pixel data cannot be decoded (unsupported transfer syntax or corrupt stream)"),
    "blank_series": ("continuity", "rejected", "every pixel of every image has the same value (an empty series)"),
    "too_few_slices": ("continuity", "rejected", "fewer slices than min_slices after localizers and derived images are removed"),
    "mixed_orientation": ("continuity", "rejected", "images of one series/time point do not share one ImageOrientationPatient"),
    "inconsistent_geometry": ("continuity", "rejected", "Rows, Columns or PixelSpacing differ within the series"),
    "duplicate_position": ("continuity", "rejected", "two images share one slice position within a time point"),
    "missing_slice": ("continuity", "rejected", "a gap in slice positions: at least one slice is missing"),
    "non_uniform_spacing": ("continuity", "rejected", "slice positions are not uniformly spaced (and no single gap explains it)"),
    "incomplete_4d": ("continuity", "rejected", "time points of a 4D series have different numbers of slices"),
    "localizer_series": ("continuity", "rejected", "the whole series is a localizer/scout"),
    "derived_series": ("continuity", "rejected", "the whole series is derived/secondary (MPR, MIP, ADC map …)"),
    # continuity: unsupported or broken input (docs/bad-input.md)
    "missing_geometry": ("continuity", "rejected", "ImagePositionPatient, ImageOrientationPatient or PixelSpacing missing, non-finite or degenerate"),
    "unsupported_pixel_format": ("continuity", "rejected", "pixel encoding not supported: float pixel data, BitsAllocated not 8/16/32, BitsStored > BitsAllocated"),
    "color_image": ("continuity", "rejected", "colour pixels (SamplesPerPixel > 1 or a non-MONOCHROME photometric interpretation)"),
    "multiframe_unsupported": ("continuity", "rejected", "a multi-frame object that is neither Enhanced MR nor a mosaic (those are split into images at deid)"),
    "gantry_tilt": ("continuity", "rejected", "slice positions do not advance along the slice normal (gantry tilt / sheared stack)"),
    "duplicate_instance": ("continuity", "rejected", "two files of the series share one SOPInstanceUID"),
    "malformed_header": ("continuity", "rejected", "an attribute's value cannot be read as its type (non-numeric, wrong VM or VR); the message names the attribute"),
    "continuity_error": ("continuity", "failed", "an unexpected error while checking the series"),
    # continuity (instance level: removed, the series goes on)
    "localizer_removed": ("continuity", "rejected", "a localizer image mixed into the series was removed"),
    "derived_removed": ("continuity", "rejected", "a derived image mixed into the series was removed"),
    "duplicate_removed": ("continuity", "rejected", "a second copy of an image was removed: same SOPInstanceUID, or the same image under another UID (a classic and an enhanced copy: same position, orientation, time point, acquisition time, echo, b-value, gradient and ASL context), equal pixels"),
    # convert
    "duplicate_series": ("convert", "rejected", "the same voxels as another series of the exam (same content_sha256, NIfTI shape and affine, time points, image set, SeriesDescription and TR/TE/flip angle; a classic and an enhanced copy under two SeriesInstanceUIDs): the series converted first in series-id order is kept, this one's NIfTI, sidecars and PNGs are removed; the message names the kept series"),
    "convert_error": ("convert", "failed", "an unexpected error while writing PNG or NIfTI"),
    "iqm_error": ("convert", "failed", "the image-quality metrics or thumbnail of a converted series could not be computed (item <series_id>/iqm): the series is converted and catalogued without a series_quality row; rerun=failed recomputes them"),
    "disk_full": ("any", "failed", "no space left on the device (any stage, the ledger, the catalog merge): the run stopped; free space and re-run, unfinished exams are picked up"),
    # convert: dicom2nifti refused a series that passed our checks (its own validation name)
    **{"d2n_" + code.lower().replace("/", "_"): ("convert", "rejected", f"dicom2nifti raised {code}: {meaning}")
       for code, meaning in {
           "TOO_FEW_SLICES/LOCALIZER": "too few slices, or a localizer", "NON_IMAGING_DICOM_FILES": "files without pixels",
           "IMAGE_ORIENTATION_INCONSISTENT": "orientations differ", "NON_CUBICAL_IMAGE/GANTRY_TILT": "sheared stack",
           "SLICE_INCREMENT_INCONSISTENT": "slice steps differ", "INSTANCE_NUMBER_INCONSISTENT": "instance numbers",
           "NOT_A_VOLUME": "slices do not stack into a volume", "MISSING_DICOM_FILES": "time points of unequal size",
           "UNSUPPORTED_DATA": "a data kind it does not convert", "NO_DICOM_FILES_FOUND": "no files",
           "OTHER": "another structural error (the message names it)"}.items()},
    # ingest (mrifoundry ingest --bids/--nifti: NIfTI collections, docs/ingest.md)
    "unreadable_nifti": ("ingest", "rejected", "the file does not open as NIfTI (empty, truncated, corrupt gzip or header)"),
    "not_a_volume": ("ingest", "rejected", "the image is not 3D or 4D (2D, or more than 4 dimensions after dropping singletons)"),
    "bad_dimensions": ("ingest", "rejected", "a spatial axis has fewer voxels than min_voxels, or the voxel size/affine is zero, negative or not finite"),
    "non_finite_voxels": ("ingest", "rejected", "the image holds NaN or infinite values"),
    "empty_volume": ("ingest", "rejected", "every voxel has the same value (an empty or zero volume)"),
    "duplicate_content": ("ingest", "rejected", "the same voxels as a series already in the catalog (mrifoundry.digest.voxel_sha256); the message names it"),
    "not_bids_named": ("ingest", "rejected", "a NIfTI file of a BIDS dataset outside sub-<label>/[ses-<label>/]<datatype>/ or without a BIDS name: not ingested (use --nifti for such folders)"),
    "ingest_error": ("ingest", "failed", "an unexpected error while ingesting the file"),
    # any stage
    "phi_quarantined": ("audit", "rejected", "the PHI audit found an identifier in this item's research-zone files: they were moved to restricted/quarantine/ and its catalog rows dropped"),
    "stage_input_missing": ("any", "failed", "the previous stage's artifact is missing: run that stage first"),
    # catalog
    "catalog_error": ("catalog", "failed", "the exam's catalog rows could not be written"),
}

STAGES = ("retrieve", "deid", "continuity", "convert", "catalog")
INGEST_STAGE = "ingest"   # NIfTI/BIDS collections: one stage per file (tasks/ingest/collection/)


def describe(code: str) -> str:
    return REASONS[code][2]


def status_of(code: str) -> str:
    return REASONS[code][1]
