"""Downstream readers: ITK (.mha/.nrrd) geometry → RAS, real NIfTI files, DICOM series folders."""
from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from nibabel.testing import data_path

from mrifoundry.tasks.ingest.labelled3d.readers import is_image_path, itk_to_nifti, read_image, split_ext
from mrifoundry.tasks.ingest.labels import CaseError
from tests.dicom_factory import pixel_lps, write_series

SHAPE = (5, 4, 3)  # ITK (i, j, k)


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    swap = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], dtype=float)  # permuted, flipped axes
    return rz @ swap


def _itk_image() -> sitk.Image:
    vals = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE[::-1])  # every voxel its own value
    img = sitk.GetImageFromArray(vals)  # numpy [k, j, i]
    img.SetSpacing((0.5, 1.25, 2.0))
    img.SetOrigin((10.0, -20.0, 5.0))
    img.SetDirection(tuple(_rotation(25).ravel()))
    return img


@pytest.mark.parametrize("ext", [".mha", ".nrrd"])
def test_itk_geometry_matches_simpleitk_both_ways(tmp_path, ext):
    path = tmp_path / f"img{ext}"
    itk = _itk_image()
    sitk.WriteImage(itk, str(path))
    img, fmt = read_image(path)
    assert fmt == {".mha": "mha", ".nrrd": "nrrd"}[ext]
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    data = np.asarray(img.dataobj)
    flip = np.array([-1.0, -1.0, 1.0])
    # ITK index → value → our voxel holding that value: same RAS point as ITK's LPS point, flipped
    for idx in [(0, 0, 0), (4, 3, 2), (2, 1, 0), (1, 3, 2)]:
        value = itk.GetPixel(idx)
        ours = np.argwhere(data == value)
        assert len(ours) == 1
        world = img.affine @ np.append(ours[0], 1.0)
        assert np.allclose(world[:3], flip * np.array(itk.TransformIndexToPhysicalPoint(idx)), atol=1e-4)
    # and back: a voxel of ours → its RAS point → ITK finds the same value there
    for vox in [(0, 0, 0), tuple(int(s) - 1 for s in data.shape), (1, 2, 1)]:
        ras = (img.affine @ np.append(vox, 1.0))[:3]
        back = itk.TransformPhysicalPointToIndex(tuple(float(x) for x in flip * ras))
        assert itk.GetPixel(back) == data[vox]


def test_itk_vector_pixels_become_channels_and_2d_is_refused(tmp_path):
    arr = np.stack([np.full((3, 4, 5), 1.0), np.full((3, 4, 5), 2.0)], axis=-1).astype(np.float32)
    img = itk_to_nifti(sitk.GetImageFromArray(arr, isVector=True))
    assert img.shape == (5, 4, 3, 2)
    assert np.all(np.asarray(img.dataobj)[..., 1] == 2.0)
    with pytest.raises(CaseError, match="3D"):
        itk_to_nifti(sitk.GetImageFromArray(np.zeros((4, 5), np.float32)))


def test_real_nifti_files_of_nibabel_are_read_in_ras(tmp_path):
    src = f"{data_path}/anatomical.nii"  # LAS, big-endian int16
    img, fmt = read_image(src)
    assert fmt == "nifti" and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    orig = nib.load(src)
    # LAS → RAS flips the first axis: the same voxel values, mirrored in x
    assert np.array_equal(np.asarray(img.dataobj), np.asarray(orig.dataobj)[::-1])
    img4, _ = read_image(f"{data_path}/example4d.nii.gz")
    assert img4.shape == (128, 96, 24, 2)


def test_names_and_readability(tmp_path):
    assert split_ext("BraTS_001_t1.nii.gz") == ("BraTS_001_t1", ".nii.gz")
    assert split_ext("a.NRRD") == ("a", ".nrrd") and split_ext("notes.txt") is None and split_ext(".nii") is None
    with pytest.raises(CaseError, match="not a readable image"):
        read_image(tmp_path / "x.png")
    assert not is_image_path(tmp_path)  # an empty folder is no DICOM series


def test_dicom_series_folder_is_sorted_along_the_normal(tmp_path):
    vol = (np.arange(4 * 6 * 7).reshape(4, 6, 7) % 97 + 3).astype(np.uint16)  # (slices, rows, cols)
    # files written in reverse spatial order: the reader must sort them itself
    write_series(tmp_path / "ser", n_slices=4, rows=6, cols=7, origin=(-10.0, -20.0, 30.0), spacing=(1.0, 1.5),
                 positions=[6.0, 4.0, 2.0, 0.0], volume=vol[::-1])
    img, fmt = read_image(tmp_path / "ser")
    assert fmt == "dicom" and img.shape == (7, 6, 4)
    data = np.asarray(img.dataobj)
    for k, r, c in [(0, 0, 0), (3, 5, 6), (2, 1, 4)]:
        lps = pixel_lps((1, 0, 0, 0, 1, 0), (-10.0, -20.0, 30.0), (1.0, 1.5), 2.0, r, c, k)
        vox = np.rint(np.linalg.inv(img.affine) @ np.append(lps * [-1, -1, 1], 1.0))[:3].astype(int)
        assert data[tuple(vox)] == vol[k, r, c]
    two = tmp_path / "two"
    shutil.copytree(tmp_path / "ser", two)
    write_series(two / "b", n_slices=2, rows=6, cols=7)
    with pytest.raises(CaseError, match="2 DICOM series"):
        read_image(two)
