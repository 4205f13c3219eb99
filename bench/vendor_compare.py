"""Our converted series against dcm2niix's output of the same DICOM, in world space.

Nothing here depends on either converter's voxel order or conventions beyond what their files
state: volumes are compared at the same world points, gradient and phase-encoding directions
are taken from each file's own frame to patient (RAS) space first.

- **r**: Pearson's r between our volume and dcm2niix's at the same time point, sampling
  dcm2niix's trilinearly at our voxel centres where both have data (our voxels outside the
  acquired slab are 0).
- **bvec**: FSL's convention (the x component is negated when the affine's determinant is
  positive) undone, then the vector taken through the affine's rotation to world space; the
  angle between ours and dcm2niix's, for b > 0.
- **phase encoding**: the BIDS code (``j-`` …) as a world vector through each affine; the same
  direction when the angle is below 45° (ours is rounded to the nearest axis of a resampled
  image), the same axis when only ``PhaseEncodingAxis`` is known.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["compare_outputs", "pe_world", "world_bvecs", "world_correlations"]

R_MIN, BVEC_MAX_DEG, BVAL_TOL = 0.99, 1.0, 1.0


def _rotation(affine: np.ndarray) -> np.ndarray:
    m = np.asarray(affine, dtype=float)[:3, :3]
    return m / np.linalg.norm(m, axis=0)


def _frames(img: nib.Nifti1Image) -> int:
    return int(img.shape[3]) if img.ndim == 4 else 1


def world_correlations(ours: Path, ref: Path, pairs: list[tuple[int, int]]) -> list[float]:
    """r for each (our time point, dcm2niix's time point) pair (NaN where too few voxels or flat)."""
    a, b = nib.load(ours), nib.load(ref)
    ijk = np.indices(a.shape[:3]).reshape(3, -1)
    world = a.affine[:3, :3] @ ijk + a.affine[:3, 3:4]
    inv = np.linalg.inv(b.affine)
    vox = inv[:3, :3] @ world + inv[:3, 3:4]
    inside = np.all((vox >= -0.5) & (vox <= np.array(b.shape[:3])[:, None] - 0.5), axis=0)
    out = []
    for ta, tb in pairs:
        da = np.asarray(a.dataobj[..., ta] if a.ndim == 4 else a.dataobj, dtype=np.float32).reshape(-1)[inside]
        db = np.asarray(b.dataobj[..., tb] if b.ndim == 4 else b.dataobj, dtype=np.float32).reshape(b.shape[:3])
        sampled = ndimage.map_coordinates(db, vox[:, inside], order=1, mode="nearest")
        keep = da != 0
        if keep.sum() < 100 or np.std(da[keep]) == 0 or np.std(sampled[keep]) == 0:
            out.append(float("nan"))
            continue
        out.append(float(np.corrcoef(da[keep], sampled[keep])[0, 1]))
    return out


def world_bvecs(bvec_file: Path, affine: np.ndarray) -> np.ndarray:
    """FSL bvecs (3 × N) → unit world (RAS) vectors, N × 3 (zero rows stay zero)."""
    v = np.atleast_2d(np.loadtxt(bvec_file)).reshape(3, -1).T.copy()
    if np.linalg.det(np.asarray(affine)[:3, :3]) > 0:
        v[:, 0] = -v[:, 0]
    w = v @ _rotation(affine).T
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    return np.divide(w, norms, out=np.zeros_like(w), where=norms > 1e-6)


def pe_world(code: str | None, affine: np.ndarray) -> np.ndarray | None:
    """A BIDS phase-encoding code (``i``, ``j-`` …) as a world (RAS) unit vector."""
    if not code or code[0] not in "ijk":
        return None
    return _rotation(affine)[:, "ijk".index(code[0])] * (-1.0 if code.endswith("-") else 1.0)


def _pe_from_dicom(ref: dict, code: str) -> np.ndarray | None:
    """dcm2niix's code read in the DICOM image frame its JSON states (row cosine, column cosine):
    its rotated 3D outputs keep the label of that frame. ``j-`` there is along the column cosine
    (dcm2niix flips rows), ``i`` along the row cosine; LPS → RAS."""
    iop, rc = ref.get("ImageOrientationPatientDICOM"), ref.get("InPlanePhaseEncodingDirectionDICOM")
    if not iop or rc not in ("ROW", "COL") or len(iop) != 6:
        return None
    vec = np.asarray(iop[:3] if rc == "ROW" else iop[3:], dtype=float) * np.array([-1.0, -1.0, 1.0])
    negative = code.endswith("-")
    return vec * ((1.0 if negative else -1.0) if rc == "COL" else (-1.0 if negative else 1.0))


def _pe_agree(ours: dict, ref: dict, a_aff, b_aff) -> tuple[str | None, str | None, bool | None]:
    mine = ours.get("PhaseEncodingDirection") or ours.get("PhaseEncodingAxis")
    theirs = ref.get("PhaseEncodingDirection") or ref.get("PhaseEncodingAxis")
    va, vb = pe_world(mine, a_aff), pe_world(theirs, b_aff)
    truth = _pe_from_dicom(ref, theirs or "")
    if vb is not None and truth is not None and abs(float(vb @ truth)) < math.cos(math.radians(45)):
        vb = truth   # a 3D volume dcm2niix rotated: its label is of the DICOM frame (docs/vendors.md)
    if va is None or vb is None:
        return mine, theirs, (None if va is None and vb is None else False)
    signed = "PhaseEncodingDirection" in ours and "PhaseEncodingDirection" in ref
    dot = float(va @ vb) if signed else abs(float(va @ vb))
    return mine, theirs, dot > math.cos(math.radians(45))


def compare_outputs(ours: Path, ref: Path, n_slices: int | None) -> dict:
    """Every differential measure of one of our NIfTIs (with its sidecars) against one dcm2niix
    output (with its .json/.bval/.bvec). ``ok`` says whether all that apply pass."""
    a, b = nib.load(ours), nib.load(ref)
    # dcm2niix names carry dotted UIDs: add suffixes to the name, never with_suffix
    stem_a, stem_b = str(ours.with_name(ours.name.split(".")[0])), str(ref)[:-len(".nii")]
    t_a, t_b = _frames(a), _frames(b)
    res: dict = {"timepoints": (t_a, t_b), "slices": (n_slices, int(b.shape[2]) if b.ndim >= 3 else 1)}
    rs = world_correlations(ours, ref, [(t, t) for t in range(min(t_a, t_b))])
    finite = [r for r in rs if not math.isnan(r)]
    res["r_min"] = round(min(finite), 4) if finite else None
    res["r_mid"] = round(rs[len(rs) // 2], 4) if rs and not math.isnan(rs[len(rs) // 2]) else None
    bval_a, bval_b = Path(stem_a + ".bval"), Path(stem_b + ".bval")
    res["bvals"] = None
    if bval_b.exists() or bval_a.exists():
        va = np.atleast_1d(np.loadtxt(bval_a)) if bval_a.exists() else np.array([])
        vb = np.atleast_1d(np.loadtxt(bval_b)) if bval_b.exists() else np.array([])
        res["bvals"] = (" ".join(f"{x:g}" for x in va), " ".join(f"{x:g}" for x in vb))
        res["bval_ok"] = va.shape == vb.shape and bool(np.all(np.abs(va - vb) <= BVAL_TOL))
        bvec_a, bvec_b = Path(stem_a + ".bvec"), Path(stem_b + ".bvec")
        if res["bval_ok"] and bvec_a.exists() and bvec_b.exists():
            wa, wb = world_bvecs(bvec_a, a.affine), world_bvecs(bvec_b, b.affine)
            weighted = (vb > 50) & (np.linalg.norm(wb, axis=1) > 0)   # b=0 directions mean nothing
            if weighted.any():
                dots = np.clip(np.sum(wa[weighted] * wb[weighted], axis=1), -1, 1)
                res["bvec_max_deg"] = round(float(np.degrees(np.arccos(dots)).max()), 3)
    ja = json.loads(Path(stem_a + ".json").read_text()) if Path(stem_a + ".json").exists() else {}
    jb = json.loads(Path(stem_b + ".json").read_text()) if Path(stem_b + ".json").exists() else {}
    res["pe"] = _pe_agree(ja, jb, a.affine, b.affine)
    res["ok"] = (t_a == t_b and res["slices"][0] in (res["slices"][1], *b.shape[:3])
                 and res["r_min"] is not None and res["r_min"] >= R_MIN and res.get("bval_ok", True) is not False
                 and res.get("bvec_max_deg", 0.0) <= BVEC_MAX_DEG and res["pe"][2] is not False)
    return res
