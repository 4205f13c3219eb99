"""Any 3D image file (or DICOM series folder) → a nibabel image in RAS.

* ``.nii`` / ``.nii.gz``: nibabel;
* ``.mha`` / ``.mhd`` / ``.nrrd`` / ``.nhdr``: SimpleITK, its LPS geometry turned into a
  RAS affine (:func:`itk_to_nifti`); a vector pixel type becomes channels on axis 4;
* a folder of DICOM files (one series, single-frame images): sorted along the slice
  normal and converted by the curation path (:func:`tasks.curation.convert.nifti.dicom_to_image`,
  dicom2nifti); DICOM-SEG files in the folder are left out (:mod:`.dicom_seg` reads them).

Every reader returns ``nib.as_closest_canonical`` of the image and the ``source_format``
(nifti, mha, nrrd, dicom) recorded in ``labelled_volumes``.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from mrifoundry.tasks.ingest.labels import CaseError

#: extension → labelled_volumes.source_format (longest first: .nii.gz before .nii)
IMAGE_EXTS = {".nii.gz": "nifti", ".nii": "nifti", ".mha": "mha", ".mhd": "mha", ".nrrd": "nrrd", ".nhdr": "nrrd"}
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: LPS (DICOM/ITK world) ↔ RAS (NIfTI world): flip x and y
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def split_ext(name: str) -> tuple[str, str] | None:
    """(stem, extension) for a readable image file name, else None (``a.nii.gz`` → ``(a, .nii.gz)``)."""
    low = name.lower()
    for ext in IMAGE_EXTS:
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return None


def is_dicom_file(path: Path) -> bool:
    """Part-10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """DICOM files under ``folder`` (recursive, hidden files left out), sorted by path."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.is_file() and not p.name.startswith(".") and is_dicom_file(p))


def is_image_path(path: Path) -> bool:
    """A readable image file, or a folder holding DICOM files."""
    path = Path(path)
    if path.is_dir():
        return any(is_dicom_file(p) for p in path.iterdir() if p.is_file())
    return split_ext(path.name) is not None


def itk_to_nifti(image) -> nib.Nifti1Image:
    """A SimpleITK image → a NIfTI image with the equivalent RAS affine (not reoriented).

    ITK maps index ``(i, j, k)`` to the LPS point ``origin + D @ (spacing * (i, j, k))``, with
    ``D`` the direction matrix (its columns are the index axes); NIfTI wants RAS, so the affine
    is ``diag(-1, -1, 1, 1) @ [[D * spacing, origin], [0, 1]]``. The array goes from ITK's
    ``[k, j, i(, c)]`` to ``[i, j, k(, c)]``.

    Raises:
        CaseError: not a 3D image.
    """
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise CaseError(f"expected a 3D image, got a {image.GetDimension()}D ITK image")
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.array(image.GetSpacing(), dtype=float)[None, :]
    lps[:3, 3] = image.GetOrigin()
    arr = sitk.GetArrayFromImage(image)  # [k, j, i] or [k, j, i, c]
    arr = arr.transpose(2, 1, 0, 3) if arr.ndim == 4 else arr.transpose(2, 1, 0)
    return nib.Nifti1Image(np.ascontiguousarray(arr), LPS_TO_RAS @ lps)


def read_dicom_series(folder: Path) -> nib.Nifti1Image:
    """One single-frame DICOM series in ``folder`` (SEG files ignored) → RAS image.

    Raises:
        CaseError: no images, several series, multi-frame images or no geometry.
        Exception: dicom2nifti's own errors, unchanged (the caller skips the case).
    """
    import pydicom

    from mrifoundry.tasks.curation.convert.nifti import dicom_to_image

    headers = []
    for p in dicom_files(folder):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
            continue
        headers.append((p, ds))
    if not headers:
        raise CaseError(f"{Path(folder).name}: no DICOM images in the folder")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) != 1:
        raise CaseError(f"{Path(folder).name}: {len(series)} DICOM series in one image folder (expected one)")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in headers):
        raise CaseError(f"{Path(folder).name}: multi-frame DICOM images are not supported")
    try:
        iop = np.array(headers[0][1].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        keyed = sorted((float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal)), str(p), p)
                       for p, ds in headers)
    except AttributeError as e:
        raise CaseError(f"{Path(folder).name}: DICOM images without ImagePosition/OrientationPatient") from e
    return dicom_to_image([p for _, _, p in keyed])


def read_image(path: Path) -> tuple[nib.Nifti1Image, str]:
    """(RAS image, source_format) of an image file or DICOM series folder.

    Raises:
        CaseError: not a readable format, or not 3D (ITK).
        Exception: the underlying reader's errors (corrupt file …), unchanged.
    """
    path = Path(path)
    if path.is_dir():
        return nib.as_closest_canonical(read_dicom_series(path)), "dicom"
    found = split_ext(path.name)
    if found is None:
        raise CaseError(f"{path.name}: not a readable image (use {', '.join(IMAGE_EXTS)} or a DICOM folder)")
    fmt = IMAGE_EXTS[found[1]]
    if fmt == "nifti":
        img = nib.load(path)
    else:
        import SimpleITK as sitk
        img = itk_to_nifti(sitk.ReadImage(str(path)))
    if len(img.shape) < 3:
        raise CaseError(f"{path.name}: expected a 3D image, got shape {img.shape}")
    return nib.as_closest_canonical(img), fmt


__all__ = ["IMAGE_EXTS", "LPS_TO_RAS", "SEG_SOP_CLASS", "dicom_files", "is_dicom_file", "is_image_path",
           "itk_to_nifti", "read_dicom_series", "read_image", "split_ext"]
