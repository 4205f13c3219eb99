"""What a NIfTI alone cannot say, written beside it: a BIDS-style JSON sidecar, ``.bval`` /
``.bvec`` for diffusion series and ``_aslcontext.tsv`` for ASL.

Every direction is given in the frame of the NIfTI we wrote (RAS, usually resampled), so the
files stay true to the image they sit beside:

- ``PhaseEncodingDirection`` (BIDS ``i``/``j``/``k`` with ``-`` for reversed polarity): the
  phase-encoding vector in patient space, taken to the NIfTI's voxel axes and rounded to the
  nearest axis. Without a known polarity (Philips, Canon) only ``PhaseEncodingAxis``.
- ``.bvec``: FSL's convention, as dcm2niix writes it: the gradient in the NIfTI's voxel axes,
  its first component negated when the affine's determinant is positive (FSL reads such an
  image x-flipped). Checked against dcm2niix's in world space (tests/vendor).
- ``.bval`` / ``.bvec`` / ``aslcontext`` list the time points the NIfTI holds (one, the middle
  one, by default; all with ``nifti_timepoints=all``).

Values come from the public attributes de-identification wrote (``tasks/curation/deid/acquisition.py``):
no header value that identifies anybody reaches these files.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom

from mrifoundry.atomic import write_text as _write  # a re-run never finds half a sidecar
from mrifoundry.tasks.curation.continuity.checks import Volume
from mrifoundry.tasks.curation.deid.acquisition import pe_world_vector

__all__ = ["bvec_in_image", "pe_code", "volume_values", "write_sidecars"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _rotation(affine: np.ndarray) -> np.ndarray:
    m = np.asarray(affine, dtype=float)[:3, :3]
    return m / np.linalg.norm(m, axis=0)


def pe_code(affine: np.ndarray, pe_lps: np.ndarray, signed: bool = True) -> str:
    """BIDS code of a patient-space (LPS) phase-encoding vector in the image's voxel axes."""
    vox = np.linalg.solve(_rotation(affine), _LPS_TO_RAS @ np.asarray(pe_lps, dtype=float))
    k = int(np.argmax(np.abs(vox)))
    return "ijk"[k] + ("-" if signed and vox[k] < 0 else "")


def bvec_in_image(affine: np.ndarray, g_lps) -> list[float]:
    """FSL bvec (3 values) of a unit gradient given in patient LPS, for an image with ``affine``."""
    if g_lps is None:
        return [0.0, 0.0, 0.0]
    vox = np.linalg.solve(_rotation(affine), _LPS_TO_RAS @ np.asarray(g_lps, dtype=float))
    if np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]) > 0:
        vox[0] = -vox[0]
    return [0.0 if abs(v) < 5e-7 else round(float(v), 6) for v in vox]


def volume_values(volume: Volume) -> dict:
    """b-value, LPS gradient, ASL context and orientation of a time point (its first image)."""
    ds = pydicom.dcmread(volume.files[0], stop_before_pixels=True)
    b = ds.get("DiffusionBValue")
    seq = ds.get("DiffusionGradientDirectionSequence")
    g = [float(v) for v in (seq[0].get("DiffusionGradientOrientation") or [])] if seq else []
    try:
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    except (AttributeError, TypeError, ValueError):
        iop = None
    return {"b": float(b) if b is not None and math.isfinite(float(b)) else None,
            "g": g if len(g) == 3 else None,
            "asl": str(ds.get("ASLContext", "") or "").strip().lower() or None, "iop": iop}


def write_sidecars(nifti_path: Path, volumes: list[Volume], timepoints: list[int], acquisition: dict,
                   affine: np.ndarray) -> dict:
    """Write ``<series>.json`` (and ``.bval``/``.bvec``, ``_aslcontext.tsv`` when they apply)
    beside ``nifti_path``; returns the catalog values (``sidecar``, ``phase_encoding_direction``,
    ``multiband_factor``, ``b_values``, ``asl_context``)."""
    stem = Path(nifti_path).name.split(".")[0]
    folder = Path(nifti_path).parent
    all_values = [volume_values(v) for v in volumes]   # the catalog's b-values and ASL list cover the series
    values = [all_values[t] for t in timepoints]
    side: dict = {"NumberOfTimepoints": len(volumes), "TimepointsInFile": list(timepoints)}
    acq = acquisition or {}
    pe = pe_world_vector(values[0]["iop"], acq.get("pe_axis"), acq.get("pe_sign"))
    pe_dir = None
    if pe is not None:
        side["InPlanePhaseEncodingDirectionDICOM"] = acq["pe_axis"]
        if acq.get("pe_sign"):
            pe_dir = side["PhaseEncodingDirection"] = pe_code(affine, pe)
        else:
            side["PhaseEncodingAxis"] = pe_code(affine, pe, signed=False)
    if acq.get("multiband_factor"):
        side["MultibandAccelerationFactor"] = int(acq["multiband_factor"])
    if acq.get("slice_times_ms"):
        # per slice of the native stack in ascending position (slices.slice_index), not per NIfTI plane
        side["SliceTimingBySliceIndex"] = [round(t / 1000.0, 6) for t in acq["slice_times_ms"]]
    written = [folder / f"{stem}.json"]
    b_values = None
    if any(v["b"] is not None for v in values):
        bvals = [v["b"] if v["b"] is not None else 0.0 for v in values]
        bvecs = [bvec_in_image(affine, v["g"]) for v in values]
        _write(folder / f"{stem}.bval", " ".join(f"{b:g}" for b in bvals) + "\n")
        _write(folder / f"{stem}.bvec", "\n".join(" ".join(f"{vec[i]:g}" for vec in bvecs)
                                                      for i in range(3)) + "\n")
        written += [folder / f"{stem}.bval", folder / f"{stem}.bvec"]
        b_values = ",".join(f"{b:g}" for b in sorted({round(v["b"] or 0.0) for v in all_values}))
    asl = [v["asl"] for v in all_values]
    asl_context = None
    if any(asl):
        kinds = {"label": "label", "control": "control", "m_zero_scan": "m0scan"}
        _write(folder / f"{stem}_aslcontext.tsv",
               "volume_type\n" + "".join(f"{kinds.get(v['asl'] or '', 'n/a')}\n" for v in values))
        written.append(folder / f"{stem}_aslcontext.tsv")
        asl_context = ",".join(kinds.get(a or "", "n/a") for a in asl)
    _write(folder / f"{stem}.json", json.dumps(side, indent=1, sort_keys=True) + "\n")
    return {"sidecars": written, "phase_encoding_direction": pe_dir or side.get("PhaseEncodingAxis"),
            "multiband_factor": side.get("MultibandAccelerationFactor"), "b_values": b_values,
            "asl_context": asl_context}
