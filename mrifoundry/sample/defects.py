"""Planted defects: what each one is and the outcome the curation pipeline must produce.

Each defect lives in its own series (one defect per series, so its reason is
unambiguous) of an MR exam of a non-facial protocol dated 2016–2020.
"""
from __future__ import annotations

from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

# defect → (expected_status, expected_reason). For an "ok" series a reason names an
# instance-level removal (the series is still converted).
EXPECTED: dict[str, tuple[str, str | None]] = {
    "missing_slice": ("rejected", "missing_slice"),
    "localizer_mixed": ("ok", "localizer_removed"),
    "mixed_orientation": ("rejected", "mixed_orientation"),
    "duplicate_position": ("rejected", "duplicate_position"),
    "dce_time_major": ("ok", None),
    "dce_slice_major": ("ok", None),
    "jpeg2000_lossless": ("ok", None),
    "jpegls_lossless": ("ok", None),
    "rle_lossless": ("ok", None),
    "truncated_file": ("rejected", "truncated_file"),
    "non_image_object": ("rejected", "non_image_object"),
    "burned_in_annotation": ("rejected", "burned_in_annotation"),
    "blank_series": ("rejected", "blank_series"),
    "non_mr_modality": ("rejected", "non_mr_modality"),
    "too_few_slices": ("rejected", "too_few_slices"),
}
DEFECTS = tuple(EXPECTED)

COMPRESSED = {"jpeg2000_lossless": JPEG2000Lossless, "jpegls_lossless": JPEGLSLossless,
              "rle_lossless": RLELossless}
DCE_TIMEPOINTS = 3
DCE_PROTOCOL_WORDS = ("BREAST", "PROSTATE", "LIVER", "ABDOMEN", "PELVIS")


def defect_series(defect: str, recipe_entry: tuple) -> dict:
    """Overrides of a series spec for ``defect`` (description, sequence, slices …)."""
    desc, seq, orient, post = recipe_entry
    spec: dict = {"description": desc, "seq_key": seq, "orientation": orient, "post_contrast": post}
    if orient == "oblique":
        spec["orientation"] = "coronal"
    if defect.startswith("dce_"):
        spec.update(description="AX DCE T1 FS DYN", seq_key="DCE", orientation="axial", post_contrast=True,
                    n_timepoints=DCE_TIMEPOINTS, n_slices=12, rows=64, cols=64)
    elif defect == "too_few_slices":
        spec["n_slices"] = 2
    elif defect == "non_mr_modality":
        spec.update(description="CT ATTENUATION CORRECTION", seq_key="CT", modality="CT")
    elif defect == "non_image_object":
        spec.update(description="TECHNOLOGIST NOTES", seq_key=None, modality="SR", n_slices=1,
                    orientation=None)
    elif defect in COMPRESSED:
        spec["transfer_syntax"] = str(COMPRESSED[defect])
    elif defect == "missing_slice":
        spec["n_slices"] = 15  # 15 planned, the middle file is not written
    return spec


def n_files(defect: str | None, n_slices: int, n_timepoints: int) -> int:
    """Files the series holds in the archive."""
    n = n_slices * max(n_timepoints, 1)
    if defect == "missing_slice":
        return n - 1
    if defect in ("localizer_mixed", "duplicate_position"):
        return n + 1
    return n
