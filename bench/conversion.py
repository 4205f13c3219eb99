"""Section 1: per-series DICOM → NIfTI conversion, ours vs dicom2nifti vs the dcm2niix binary.

All converters run on the same series folder, interleaved round by round. "ours" is
``tasks.curation.convert.nifti.volumes_to_nifti`` (always .nii.gz); for an uncompressed figure we
run its own pieces (dicom2nifti array + RAS + clean header) and save to .nii.
The continuity check that produces our ``Volume`` is done once, outside the timing.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.common import interleaved, median, ratio
from bench.series import make_series


def _ours_uncompressed(files: list[Path], out: Path) -> None:
    # mirrors volumes_to_nifti(voxel_size_mm=None) but writes .nii: its temp name forces gzip
    from mrifoundry.tasks.curation.convert.nifti import NiftiConfig, clean_image, output_dtype, resample, dicom_to_image
    img = dicom_to_image(files)
    integer = np.issubdtype(img.get_data_dtype(), np.integer)
    img = resample(img, NiftiConfig(voxel_size_mm=None))   # no resampling, but the same float32 pass
    data = output_dtype(np.asarray(img.dataobj), integer)
    nib.save(clean_image(data, img.affine, "mrifoundry dicom2nifti " + importlib.metadata.version("dicom2nifti")), out)


def _converters(series_dir: Path, files: list[Path], work: Path) -> dict:
    import dcm2niix
    from dicom2nifti.convert_dicom import dicom_series_to_nifti
    from mrifoundry.tasks.curation.continuity.checks import ContinuityConfig, check_series
    from mrifoundry.tasks.curation.convert.nifti import NiftiConfig, volumes_to_nifti

    vols = check_series("bench", files, ContinuityConfig()).volumes
    assert vols, "the generated series must pass the continuity checks"
    out = work / "out"
    out.mkdir()

    def d2n(name):
        return lambda: dicom_series_to_nifti(str(series_dir), str(out / name), reorient_nifti=True)

    def x(z):
        # -w 1: overwrite instead of adding a suffix on the 2nd round; -b n: no JSON sidecar
        cmd = [dcm2niix.bin, "-z", z, "-b", "n", "-w", "1", "-f", f"x{z}", "-o", str(out), str(series_dir)]
        return lambda: subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return {
        "ours .nii (native)": lambda: _ours_uncompressed(vols[0].files, out / "ours.nii"),
        "dicom2nifti .nii": d2n("d2n.nii"),
        "dcm2niix -z n": x("n"),
        "ours .nii.gz (native)": lambda: volumes_to_nifti(vols, out / "ours.nii.gz", NiftiConfig(voxel_size_mm=None)),
        "dicom2nifti .nii.gz": d2n("d2n.nii.gz"),
        "dcm2niix -z y": x("y"),
        "ours .nii.gz (RAS 1 mm)": lambda: volumes_to_nifti(vols, out / "ours1.nii.gz", NiftiConfig(voxel_size_mm=1.0)),
    }


RATIOS = [  # (ours, reference)
    ("ours .nii (native)", "dicom2nifti .nii"),
    ("ours .nii (native)", "dcm2niix -z n"),
    ("ours .nii.gz (native)", "dicom2nifti .nii.gz"),
    ("ours .nii.gz (native)", "dcm2niix -z y"),
    ("ours .nii.gz (RAS 1 mm)", "dicom2nifti .nii.gz"),
]


def run(sizes: list[tuple[int, int]], runs: int) -> dict:
    """Returns {"tables": [...], "targets": [...], "raw": {...}}."""
    timing_rows, ratio_rows, targets, raw = [], [], [], {}
    for size, n in sizes:
        work = Path(tempfile.mkdtemp(prefix="bench-conv-"))
        try:
            files = make_series(work / "series", size, n)
            times = interleaved(_converters(work / "series", files, work), runs)
            # dcm2niix exits 0 even when it writes nothing: check that every converter wrote its file
            written = {p.name for p in (work / "out").iterdir()}
            missing = {"ours.nii", "ours.nii.gz", "ours1.nii.gz", "d2n.nii", "d2n.nii.gz",
                       "xn.nii", "xy.nii.gz"} - written
            assert not missing, f"converters wrote no {sorted(missing)}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        label = f"{size}²×{n}"
        raw[label] = times
        for k, ts in times.items():
            timing_rows.append([label, k, f"{median(ts):.3f}", f"{min(ts):.3f}", f"{max(ts):.3f}", len(ts)])
        for a, b in RATIOS:
            r = ratio(times[a], times[b])
            ratio_rows.append([label, f"{a} / {b}", f"{r:.2f}"])
            if b.startswith("dicom2nifti") and "native" in a:
                targets.append({"name": f"conversion {label}: {a} / {b}", "target": "≤ 1.00",
                                "measured": f"{r:.2f}", "met": r <= 1.0})
    return {
        "tables": [
            {"title": "Conversion wall time per series (s)",
             "headers": ["series", "converter", "median", "min", "max", "runs"], "rows": timing_rows},
            {"title": "Conversion ratios (median of per-round ratios; < 1 = ours faster)",
             "headers": ["series", "ratio", "value"], "rows": ratio_rows},
        ],
        "targets": targets, "raw": raw,
    }
