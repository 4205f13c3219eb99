"""Real vendor DICOM that Python packages ship, laid out as one small archive per case.

Sources: the test data inside the nibabel and pydicom wheels, pydicom-data, and heudiconv's
wheel (``make venv`` unpacks its ``tests/data`` into ``.venv/share/heudiconv-data``; set
``MRIFOUNDRY_HEUDICONV_DATA`` to use another copy). A case whose source is not installed is
left out (``missing`` says which). Used by ``python -m bench.vendor_check`` (the vendor
table of docs/vendors.md) and by tests/vendor/.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    name: str
    vendor: str
    kind: str            # classic | mosaic | enhanced | compressed …
    source: str          # nibabel | pydicom | pydicom-data | heudiconv
    files: tuple[str, ...]
    note: str = ""
    fill: bool = False   # a generated variant: the real headers, the (blank) pixel data replaced by a pattern


CASES: tuple[Case, ...] = (
    Case("siemens-mosaic-dti", "Siemens", "mosaic", "nibabel", ("tests/data/0.dcm", "tests/data/1.dcm"),
         "DTI, 2 volumes, 36² tiles on a 7×7 grid of a 256² image"),
    Case("siemens-mosaic-dwi-gz", "Siemens", "mosaic, .dcm.gz", "nibabel",
         ("nicom/tests/data/siemens_dwi_0.dcm.gz", "nicom/tests/data/siemens_dwi_1000.dcm.gz"),
         "b=0 and b=1000, gzip-compressed files"),
    Case("philips-enhanced-mprage-gz", "Philips", "enhanced, .dcm.gz", "nibabel",
         ("nicom/tests/data/philips_mprage.dcm.gz",), "Enhanced MR, 176 frames"),
    Case("siemens-mosaic-dwi-gz-filled", "Siemens", "mosaic, .dcm.gz (generated pixels)", "nibabel",
         ("nicom/tests/data/siemens_dwi_0.dcm.gz", "nicom/tests/data/siemens_dwi_1000.dcm.gz"),
         "the b=0/b=1000 headers with a pattern in place of their all-zero pixels", fill=True),
    Case("philips-enhanced-mprage-gz-filled", "Philips", "enhanced, .dcm.gz (generated pixels)", "nibabel",
         ("nicom/tests/data/philips_mprage.dcm.gz",), "the MPRAGE header with a pattern in place of its zero pixels",
         fill=True),
    Case("siemens-classic-map", "Siemens", "classic", "nibabel", ("nicom/tests/data/decimal_rescale.dcm",),
         "one quantitative-map image (decimal rescale)"),
    Case("siemens-mip-header-only", "Siemens", "classic, derived", "nibabel",
         ("nicom/tests/data/slicethickness_empty_string.dcm",), "derived MIP, broken pixel stream"),
    Case("siemens-mosaic-bold-header-only", "Siemens", "mosaic", "nibabel", ("nicom/tests/data/csa_slice_norm.dcm",),
         "resting-state mosaic header; the pixel data is not in the file"),
    Case("siemens-mosaic-bold", "Siemens", "mosaic", "heudiconv", ("axasc35.dcm",), "fMRI, 35 ascending slices"),
    Case("siemens-mosaic-dwi-mb", "Siemens", "mosaic", "heudiconv",
         ("b0dwiForFmap/b0dwi_for_fmap+00001.dcm", "b0dwiForFmap/b0dwi_for_fmap+00002.dcm",
          "b0dwiForFmap/b0dwi_for_fmap+00003.dcm"), "multiband DWI, 150×152 tiles on a 9×9 grid, 3 volumes"),
    Case("siemens-xa-enhanced-mpr", "Siemens (XA)", "enhanced", "heudiconv",
         ("MRI_102TD_PHA_S.MR.Chen_Matthews_1.3.1.2022.11.16.15.50.20.357.31204541.dcm",), "derived MPR, 3 frames"),
    Case("siemens-classic-scouts", "Siemens", "classic", "heudiconv",
         ("01-anat-scout/0001.dcm", "phantom.dcm", "Phoenix/01+AA/01+AA+00001.dcm"), "single scout images"),
    Case("siemens-classic-phase", "Siemens", "classic", "heudiconv",
         ("01-fmap_acq-3mm/1.3.12.2.1107.5.2.43.66112.2016101409263663466202201.dcm",), "one field-map phase image"),
    Case("siemens-phoenix-report", "Siemens", "non-image", "heudiconv",
         ("Phoenix/99+PhoenixDocument/99+PhoenixDocument+00001.dcm",), "protocol document (no pixels)"),
    Case("canon-classic-small", "Canon (Toshiba)", "classic, 8 encodings", "pydicom",
         tuple(f"MR_small{s}.dcm" for s in ("", "_RLE", "_bigendian", "_expb", "_implicit", "_jp2klossless",
                                            "_jpeg_ls_lossless", "_padded")) + ("MR_truncated.dcm",),
         "one derived image in 8 transfer syntaxes, and a truncated copy"),
    Case("philips-classic-dicomdir", "Philips", "classic, DICOMDIR", "pydicom",
         ("dicomdirtests/DICOMDIR", "dicomdirtests/98892003/MR1/15820", "dicomdirtests/98892003/MR1/4919",
          "dicomdirtests/98892003/MR1/5641", "dicomdirtests/98892003/MR2/15970", "dicomdirtests/98892003/MR2/4950",
          "dicomdirtests/98892003/MR2/4981", "dicomdirtests/98892003/MR2/5011", "dicomdirtests/98892003/MR2/6273",
          "dicomdirtests/98892003/MR2/6605", "dicomdirtests/98892003/MR2/6935",
          "dicomdirtests/98892003/MR700/4467", "dicomdirtests/98892003/MR700/4528",
          "dicomdirtests/98892003/MR700/4558", "dicomdirtests/98892003/MR700/4588",
          "dicomdirtests/98892003/MR700/4618", "dicomdirtests/98892003/MR700/4648",
          "dicomdirtests/98892003/MR700/4678"), "16² localizers and projections (pixel data stripped)"),
    Case("enhanced-no-geometry", "unknown", "enhanced, 6 encodings", "pydicom-data",
         tuple(f"emri_small{s}.dcm" for s in ("", "_RLE", "_big_endian", "_jpeg_2k_lossless",
                                              "_jpeg_2k_lossless_too_short", "_jpeg_ls_lossless")),
         "10 frames without functional groups (no plane position)"),
    Case("philips-classic-large", "Philips", "classic, JPEG 2000", "pydicom-data",
         ("MR2_UNCR.dcm", "MR2_UNCI.dcm", "MR2_J2KR.dcm", "MR2_J2KI.dcm"), "one 1024² image, 4 encodings"),
    Case("siemens-mpr-overlay", "Siemens", "classic, derived", "pydicom-data",
         ("MR-SIEMENS-DICOM-WithOverlays.dcm",), "derived MPR with overlays"),
)


def source_root(source: str) -> Path | None:
    """Where a source package's DICOM test files are installed, or None."""
    try:
        if source == "nibabel":
            import nibabel
            return Path(nibabel.__file__).parent
        if source == "pydicom":
            import pydicom
            return Path(pydicom.__file__).parent / "data" / "test_files"
        if source == "pydicom-data":
            from pydicom.data import get_testdata_file
            path = get_testdata_file("emri_small.dcm")
            return Path(path).parent if path else None
    except ImportError:
        return None
    if source == "heudiconv":
        root = Path(os.environ.get("MRIFOUNDRY_HEUDICONV_DATA", REPO / ".venv" / "share" / "heudiconv-data"))
        return root if root.is_dir() else None
    raise ValueError(f"unknown source {source!r}")


def build(dest: Path, names: list[str] | None = None) -> tuple[dict[str, Path], list[str]]:
    """Copy each case into ``dest/<case>/`` (one archive folder each).

    Returns:
        ({case name: archive folder}, [names of cases whose source is not installed]).
    """
    built, missing = {}, []
    for case in CASES:
        if names and case.name not in names:
            continue
        root = source_root(case.source)
        if root is None or not all((root / f).exists() for f in case.files):
            missing.append(case.name)
            continue
        folder = Path(dest) / case.name
        for rel in case.files:
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if case.fill:
                fill_pixels(root / rel, target)
            else:
                shutil.copyfile(root / rel, target)
        built[case.name] = folder
    return built, missing


def fill_pixels(src: Path, dest: Path) -> None:
    """Copy ``src`` with its pixel values replaced by a smooth, non-repeating pattern of the
    same shape and dtype (frames get different offsets), gzip in and out as the names say."""
    import gzip
    import io

    import numpy as np
    import pydicom

    raw = Path(src).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(gzip.decompress(raw) if str(src).endswith(".gz") else raw))
    arr = ds.pixel_array
    grid = np.indices(arr.shape, dtype=np.float64)
    pattern = 800 + 300 * np.sin(grid[-1] / 9.0) * np.cos(grid[-2] / 13.0) + 2.0 * (grid[-1] + 3 * grid[-2]) / arr.shape[-1]
    if arr.ndim == 3:
        pattern += 25.0 * grid[0]
    ds.PixelData = pattern.astype(arr.dtype).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    data = buf.getvalue()
    dest.write_bytes(gzip.compress(data, mtime=0) if str(dest).endswith(".gz") else data)


def by_name(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def unpack_heudiconv(wheel: Path, dest: Path = REPO / ".venv" / "share" / "heudiconv-data") -> int:
    """Extract ``heudiconv/tests/data/`` of a heudiconv wheel into ``dest`` (``make venv`` does this)."""
    import zipfile
    prefix, n = "heudiconv/tests/data/", 0
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                target = Path(dest) / name[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
                n += 1
    return n


if __name__ == "__main__":
    import sys
    print(f"{unpack_heudiconv(Path(sys.argv[1]))} files unpacked")
