"""A small BIDS dataset from real NIfTI files that nibabel and nilearn ship, plus broken files.

No package ships a BIDS dataset with real voxels (pybids' examples are empty placeholders), so the
real images are laid out here by BIDS 1.9 names: the nilearn MNI152 T1 template, nibabel's SPM
anatomical and its FSL 4D fMRI example. ``EXPECTED`` says what ingest must decide for each file.
``make demo`` ingests it beside the curated sample; the tests use it too.
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.testing import data_path

import nilearn

_NILEARN = Path(nilearn.__file__).parent / "datasets" / "data"
MNI_T1 = _NILEARN / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
NIB = Path(data_path)

#: identifying values planted in the sidecars: none may reach the research zone
PHI = {"PatientName": "OKONKWO^ADAEZE", "PatientID": "MRN40917733", "PatientBirthDate": "19610412",
       "InstitutionName": "Saint Brendan Clinic", "InstitutionAddress": "12 Harbour Road^Cobh",
       "DeviceSerialNumber": "SN5531907", "AccessionNumber": "ACC7781203",
       "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.11122233344455566677788899"}

#: relative path → (status, reason) that ingest must record
EXPECTED = {
    "sub-01/anat/sub-01_T1w.nii.gz": ("done", None),
    "sub-01/func/sub-01_task-rest_bold.nii.gz": ("done", None),
    "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii": ("done", None),
    "sub-02/ses-1/anat/sub-02_ses-1_acq-moved_T2w.nii": ("done", None),
    "sub-02/ses-2/func/sub-02_ses-2_task-rest_bold.nii": ("rejected", "bad_dimensions"),
    "sub-03/anat/sub-03_T1w.nii.gz": ("rejected", "duplicate_content"),
    "sub-03/anat/sub-03_FLAIR.nii.gz": ("rejected", "unreadable_nifti"),
    "sub-03/anat/sub-03_PDw.nii.gz": ("rejected", "non_finite_voxels"),
    "sub-04/anat/sub-04_ce-gad_T1w.nii.gz": ("rejected", "empty_volume"),
    "sub-04/anat/sub-04_T2w.nii.gz": ("rejected", "unreadable_nifti"),
    "extra/scan.nii.gz": ("rejected", "not_bids_named"),
}


def _json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def make_bids(root: Path, broken: bool = True) -> Path:
    """Write the dataset under ``root``; ``broken=False`` leaves out the bad files (a valid BIDS tree)."""
    root = Path(root)
    _json(root / "dataset_description.json", {"Name": "mrifoundry test corpus", "BIDSVersion": "1.9.0",
                                               "DatasetType": "raw", "License": "CC0"})
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n" + ("sub-03\nsub-04\n" if broken else ""))
    (root / "README").write_text("Real NIfTI files from the nibabel and nilearn packages in a BIDS layout.\n")
    # inheritance: top-level sidecars apply to every T1w / bold; sub-01's own T1w sidecar adds to it
    _json(root / "T1w.json", {"MagneticFieldStrength": 3, "Manufacturer": "Siemens", "RepetitionTime": 2.3,
                              "EchoTime": 0.00298, "InversionTime": 0.9, "FlipAngle": 9})
    _json(root / "task-rest_bold.json", {"TaskName": "rest", "RepetitionTime": 2.0, "EchoTime": 0.03})
    _copy(MNI_T1, root / "sub-01/anat/sub-01_T1w.nii.gz")
    _json(root / "sub-01/anat/sub-01_T1w.json",
          {**PHI, "SeriesDescription": "t1_mprage_sag OKONKWO ADAEZE", "ManufacturersModelName": "Prisma_fit",
           "AcquisitionDateTime": "2019-03-04T10:11:12.000000", "RepetitionTime": 2.4})
    # example4d stores TR 2000 with units "sec": say 2.0 s, as its sidecar does (voxels untouched)
    bold = nib.load(NIB / "example4d.nii.gz")
    bold.header.set_zooms(bold.header.get_zooms()[:3] + (2.0,))
    (root / "sub-01/func").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asanyarray(bold.dataobj), bold.affine, bold.header), root / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    _copy(NIB / "anatomical.nii", root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii")
    _copy(NIB / "reoriented_anat_moved.nii", root / "sub-02/ses-1/anat/sub-02_ses-1_acq-moved_T2w.nii")
    _json(root / "sub-02/ses-1/anat/sub-02_ses-1_acq-moved_T2w.json", {"RepetitionTime": 3.2, "EchoTime": 0.09})
    if not broken:
        return root
    _copy(NIB / "functional.nii", root / "sub-02/ses-2/func/sub-02_ses-2_task-rest_bold.nii")   # 3 slices
    _copy(MNI_T1, root / "sub-03/anat/sub-03_T1w.nii.gz")                                 # same voxels as sub-01
    (root / "sub-03/anat/sub-03_FLAIR.nii.gz").write_bytes(b"")                          # pybids-style placeholder
    nan = np.ones((16, 16, 12), np.float32)
    nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), root / "sub-03/anat/sub-03_PDw.nii.gz")
    (root / "sub-04/anat").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 12), np.int16), np.eye(4)), root / "sub-04/anat/sub-04_ce-gad_T1w.nii.gz")
    good = gzip.compress(nib.Nifti1Image(np.arange(16 * 16 * 12, dtype=np.int16).reshape(16, 16, 12),
                                         np.eye(4)).to_bytes())
    (root / "sub-04/anat/sub-04_T2w.nii.gz").write_bytes(good[: len(good) // 2])          # truncated gzip
    (root / "sub-04/anat/sub-04_T2w.json").write_text("{not json")
    _gz(NIB / "anatomical.nii", root / "extra/scan.nii.gz")
    return root


def _gz(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(gzip.compress(src.read_bytes()))


if __name__ == "__main__":   # python -m mrifoundry.sample.bids_corpus DIR
    import sys
    target = Path(sys.argv[1])
    if target.exists():
        shutil.rmtree(target)
    print(make_bids(target))
