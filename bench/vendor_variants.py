"""Generated variants of the real vendor cases: acquisitions the packaged files do not hold,
written from their real headers and pixels, for the differential test against dcm2niix.

Each variant starts from the tiles of a real Siemens mosaic (heudiconv's multiband DWI, 3
volumes of 81 slices, or its 35-slice BOLD volume), split as the pipeline splits them, and
rewrites what one vendor's export of another acquisition would hold:

- ``siemens-classic-sms-dwi``: the MB3 DWI as classic slices; the slices of one multiband shot
  share an AcquisitionTime (from the CSA slice-time table), as a classic Siemens export has it.
- ``ge-epi-pepolar-alternating`` / ``ge-epi-pepolar-reversed``: GE's research ``epi_pepolar``
  EPI (forward and reversed phase-encoding volumes alternating, or all reversed), with GE's
  private sequence name and mode (0019,109C)/(0019,10B3) and RectilinearPhaseEncodeReordering.
- ``philips-dwi-b0-trace``: a Philips classic DWI (private b-value, gradient and direction
  label) whose b=0 and isotropic trace images are both marked 'I'.
- ``canon-classic-and-enhanced`` (one SeriesInstanceUID) / ``-2uids``: one volume exported as
  classic images and as an Enhanced MR object (``bench/enhanced_writer.py``); dcm2niix
  converts both copies, we keep one and record the other (``duplicate_removed`` /
  ``duplicate_series``).
- ``philips-pcasl``: Philips classic pCASL: label and control images at the same positions in
  each dynamic, label first in some dynamics and control first in others (acquisition order is
  kept, by dcm2niix as by us).

Every image keeps the real pixels (time points get a smooth, distinct modulation), so the
world-space correlation against dcm2niix is meaningful and a wrong volume order shows.
"""
from __future__ import annotations

import copy
import datetime as dt
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from bench.vendor_corpus import source_root

__all__ = ["VARIANTS", "Variant", "build_variants", "by_name"]

_DWI = ("b0dwiForFmap/b0dwi_for_fmap+00001.dcm", "b0dwiForFmap/b0dwi_for_fmap+00002.dcm",
        "b0dwiForFmap/b0dwi_for_fmap+00003.dcm")
_BOLD = ("axasc35.dcm",)


@dataclass(frozen=True)
class Variant:
    name: str
    vendor: str
    kind: str
    files: tuple[str, ...]               # heudiconv files it starts from
    write: Callable[[list[list[Dataset]], Path], None]
    note: str = ""


def _tiles(root: Path, files: tuple[str, ...]) -> list[list[Dataset]]:
    """The classic images of each real mosaic (one list per volume, in tile = position order)."""
    from mrifoundry.tasks.curation.deid.frames import split_images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [split_images(pydicom.dcmread(root / f)) for f in files]


def _csa_times(ds: Dataset) -> list[float]:
    import nibabel.nicom.csareader as csareader
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        csa = csareader.get_csa_header(ds, "image")
    return [float(t) for t in (csa["tags"]["MosaicRefAcqTimes"]["items"] if csa else [])]


def _strip_siemens(ds: Dataset) -> None:
    """Remove the Siemens private groups (CSA headers) so another vendor's rules apply."""
    for tag in [e.tag for e in ds if e.tag.is_private and e.tag.group in (0x0019, 0x0029, 0x0051)]:
        del ds[tag]


def _modulate(ds: Dataset, t: int, k: int) -> None:
    """Scale the image by a smooth field that differs per time point (volumes distinguishable)."""
    arr = ds.pixel_array.astype(np.float64)
    cols = np.linspace(0.0, 1.0, arr.shape[1])[None, :]
    field = 1.0 + 0.5 * np.sin(np.pi * (2.0 * cols + 0.7 * t)) + 0.02 * k / 100.0
    out = np.clip(np.rint(arr * field), 0, np.iinfo(ds.pixel_array.dtype).max).astype(ds.pixel_array.dtype)
    ds.PixelData = out.tobytes()


def _renumber(volumes: list[list[Dataset]], series_uid: str | None = None) -> None:
    uid = series_uid or generate_uid()
    n = 0
    for vol in volumes:
        for ds in vol:
            n += 1
            ds.SeriesInstanceUID = uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = n


def _save(volumes: list[list[Dataset]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for ds in (d for vol in volumes for d in vol):
        ds.save_as(folder / f"{int(ds.InstanceNumber):05d}.dcm", enforce_file_format=True)


def _time(base: str, ms: float) -> str:
    t = dt.datetime.strptime(base.split(".")[0].ljust(6, "0"), "%H%M%S") + dt.timedelta(milliseconds=ms)
    return t.strftime("%H%M%S.%f")


def _not_a_mosaic(ds: Dataset) -> None:
    """Hide the mosaic's image count in the tile's CSA header (a classic image has none; dcm2niix
    would otherwise cut each tile into 81 tiles). The name is overwritten in place, same length."""
    for elem in ds:
        if elem.tag.is_private and elem.tag.group == 0x0029 and isinstance(elem.value, bytes):
            elem.value = elem.value.replace(b"NumberOfImagesInMosaic", b"NumberOfImagesInMosaiX")
    for tag in ((0x0019, 0x100A), (0x0019, 0x1029)):   # image count and slice-time table of a mosaic
        if tag in ds:                                    # (dcm2niix takes either as "this is a mosaic")
            del ds[tag]


def _sms_dwi(volumes: list[list[Dataset]], folder: Path) -> None:
    tr_ms = 4000.0
    for t, vol in enumerate(volumes):
        times = _csa_times(vol[0])
        for k, ds in enumerate(vol):
            _not_a_mosaic(ds)
            ds.AcquisitionTime = _time("120000", t * tr_ms + times[k])
            if "TemporalPositionIdentifier" in ds:
                del ds.TemporalPositionIdentifier   # a classic Siemens export has none: times must tell
    _renumber(volumes)
    _save(volumes, folder)


def _as_ge(volumes: list[list[Dataset]], mode: int, reorder: str) -> list[list[Dataset]]:
    out = []
    for t in range(4):
        vol = []
        for k, src in enumerate(volumes[0]):
            ds = copy.deepcopy(src)
            _strip_siemens(ds)
            _modulate(ds, t, k)
            ds.Manufacturer = "GE MEDICAL SYSTEMS"
            ds.ManufacturerModelName = "DISCOVERY MR750"
            ds.TemporalPositionIdentifier = t + 1
            ds.AcquisitionTime = _time("120000", t * 2000.0 + k * 50.0)
            ds.InPlanePhaseEncodingDirection = "COL"
            ds.add_new((0x0018, 0x9034), "CS", reorder)
            ds.add_new((0x0019, 0x0010), "LO", "GEMS_ACQU_01")
            ds.add_new((0x0019, 0x109C), "LO", "epi_pepolar")
            ds.add_new((0x0019, 0x10B3), "DS", str(mode))
            vol.append(ds)
        out.append(vol)
    _renumber(out)
    return out


def _ge_alternating(volumes: list[list[Dataset]], folder: Path) -> None:
    _save(_as_ge(volumes, 2, "LINEAR"), folder)


def _ge_reversed(volumes: list[list[Dataset]], folder: Path) -> None:
    _save(_as_ge(volumes, 1, "REVERSE_LINEAR"), folder)


def _ge_dwi(volumes: list[list[Dataset]], folder: Path) -> None:
    """GE DWI: b-value in (0043,1039) (with GE's 1e9 flag offset), the gradient in GE's logical
    frequency/phase/slice frame in (0019,10BB/BC/BD)."""
    plan = [(0, 0.0, (0.0, 0.0, 0.0)), (1, 1000.0, (0.6, 0.0, 0.8)), (2, 1000.0, (-0.2, 0.9, 0.3873))]
    out = []
    for t, (src_t, b, g) in enumerate(plan):
        vol = []
        for k, src in enumerate(volumes[src_t]):
            ds = copy.deepcopy(src)
            _strip_siemens(ds)
            ds.Manufacturer = "GE MEDICAL SYSTEMS"
            ds.ManufacturerModelName = "SIGNA Premier"
            ds.TemporalPositionIdentifier = t + 1
            ds.AcquisitionTime = _time("120000", t * 4000.0 + k * 40.0)
            ds.InPlanePhaseEncodingDirection = "COL"
            ds.add_new((0x0019, 0x0010), "LO", "GEMS_ACQU_01")
            ds.add_new((0x0019, 0x109C), "LO", "epi2")
            ds.add_new((0x0019, 0x109E), "LO", "EPI2")
            for i, v in enumerate(g):
                ds.add_new((0x0019, 0x10BB + i), "DS", f"{v:.6f}")
            ds.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")
            ds.add_new((0x0043, 0x1039), "IS", [int(b) + 1_000_000_000, 8, 0, 0])
            ds.add_new((0x0043, 0x1030), "SS", 14)
            vol.append(ds)
        out.append(vol)
    _renumber(out)
    _save(out, folder)


def _philips(ds: Dataset) -> None:
    _strip_siemens(ds)
    ds.Manufacturer = "Philips Medical Systems"
    ds.ManufacturerModelName = "Achieva dStream"
    ds.add_new((0x2001, 0x0010), "LO", "Philips Imaging DD 001")
    ds.add_new((0x2001, 0x100B), "CS", "TRANSVERSAL")


def _philips_dwi(volumes: list[list[Dataset]], folder: Path) -> None:
    import nibabel.nicom.csareader as csareader
    real_g = []
    for vol in volumes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            g = csareader.get_g_vector(csareader.get_csa_header(vol[0], "image"))
        real_g.append([float(x) for x in g] if g is not None else [0.0, 0.0, 1.0])
    # b=0 marked 'I'; two directions; the isotropic trace (b>0, 'I', zero vector) last
    plan = [(0, 0.0, "I", [0.0, 0.0, 0.0]), (1, 1000.0, "X", real_g[0]), (2, 1500.0, "Y", real_g[2]),
            (2, 1500.0, "I", [0.0, 0.0, 0.0])]
    out = []
    for t, (src_t, b, label, g) in enumerate(plan):
        vol = []
        for k, src in enumerate(volumes[src_t]):
            ds = copy.deepcopy(src)
            _philips(ds)
            if t == 3:
                _modulate(ds, t, k)
            ds.TemporalPositionIdentifier = t + 1
            ds.AcquisitionTime = _time("120000", t * 4000.0)
            ds.add_new((0x2001, 0x1003), "FL", b)
            ds.add_new((0x2001, 0x1004), "CS", label)
            ds.add_new((0x2005, 0x0010), "LO", "Philips MR Imaging DD 001")
            for i, v in enumerate(g):
                ds.add_new((0x2005, 0x10B0 + i), "FL", float(v))
            vol.append(ds)
        out.append(vol)
    _renumber(out)
    _save(out, folder)


def _philips_pcasl(volumes: list[list[Dataset]], folder: Path) -> None:
    out = []
    for repeat in range(3):
        for context in ("CONTROL", "LABEL") if repeat % 2 else ("LABEL", "CONTROL"):   # either first
            t = len(out)
            vol = []
            for k, src in enumerate(volumes[0]):
                ds = copy.deepcopy(src)
                _philips(ds)
                _modulate(ds, t, k)
                ds.TemporalPositionIdentifier = repeat + 1
                ds.AcquisitionTime = _time("120000", t * 4000.0)
                ds.add_new((0x2005, 0x0014), "LO", "Philips MR Imaging DD 005")
                ds.add_new((0x2005, 0x1429), "CS", context)
                vol.append(ds)
            out.append(vol)
    _renumber(out)
    _save(out, folder)


def _canon_classic(volumes: list[list[Dataset]], folder: Path) -> list[Path]:
    vol = []
    for k, src in enumerate(volumes[0]):
        ds = copy.deepcopy(src)
        _strip_siemens(ds)
        ds.Manufacturer = "CANON_MEC"
        ds.ManufacturerModelName = "Vantage Galan 3T"
        vol.append(ds)
    _renumber([vol])
    _save([vol], folder / "classic")
    return sorted((folder / "classic").glob("*.dcm"))


def _canon_copies_one_uid(volumes: list[list[Dataset]], folder: Path) -> None:
    from bench.enhanced_writer import write_enhanced
    files = _canon_classic(volumes, folder)
    write_enhanced(files, folder / "enhanced" / "0001.dcm")


def _canon_copies_two_uids(volumes: list[list[Dataset]], folder: Path) -> None:
    from bench.enhanced_writer import write_enhanced
    files = _canon_classic(volumes, folder)
    write_enhanced(files, folder / "enhanced" / "0001.dcm", series_uid=generate_uid())


VARIANTS: tuple[Variant, ...] = (
    Variant("siemens-classic-sms-dwi", "Siemens", "classic, multiband 3 (generated)", _DWI, _sms_dwi,
            "the MB3 DWI as 243 classic slices; each shot's 3 slices share one AcquisitionTime"),
    Variant("ge-epi-pepolar-alternating", "GE", "classic, epi_pepolar (generated)", _BOLD, _ge_alternating,
            "4 volumes, odd ones acquired with reversed phase encoding (stored mirrored)"),
    Variant("ge-epi-pepolar-reversed", "GE", "classic, epi_pepolar (generated)", _BOLD, _ge_reversed,
            "4 volumes, all acquired with reversed phase encoding"),
    Variant("ge-dwi", "GE", "classic DWI (generated)", _DWI, _ge_dwi,
            "b-values with GE's 1e9 offset, gradients in GE's logical frame (0019,10BB/BC/BD)"),
    Variant("philips-dwi-b0-trace", "Philips", "classic DWI (generated)", _DWI, _philips_dwi,
            "b=0 and the isotropic trace both marked 'I' (2001,1004)"),
    Variant("canon-classic-and-enhanced", "Canon", "classic + enhanced copy, one series UID (generated)", _BOLD,
            _canon_copies_one_uid, "one 35-slice volume exported twice in one series"),
    Variant("canon-classic-and-enhanced-2uids", "Canon", "classic + enhanced copy, two series UIDs (generated)",
            _BOLD, _canon_copies_two_uids, "one 35-slice volume exported twice as two series"),
    Variant("philips-pcasl", "Philips", "classic pCASL (generated)", _BOLD, _philips_pcasl,
            "3 dynamics × label/control at the same positions"),
)


def by_name(name: str) -> Variant:
    return next(v for v in VARIANTS if v.name == name)


def build_variants(dest: Path, names: list[str] | None = None) -> tuple[dict[str, Path], list[str]]:
    """Write each variant into ``dest/<name>/`` (one archive folder each); ({name: folder}, missing)."""
    root = source_root("heudiconv")
    built, missing = {}, []
    for variant in VARIANTS:
        if names and variant.name not in names:
            continue
        if root is None or not all((root / f).exists() for f in variant.files):
            missing.append(variant.name)
            continue
        folder = Path(dest) / variant.name
        variant.write(_tiles(root, variant.files), folder)
        built[variant.name] = folder
    return built, missing
