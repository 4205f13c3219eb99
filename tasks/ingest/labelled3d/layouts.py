"""Find the cases of a downstream dataset folder: which files are a case's channels and label.

Layouts (``docs/downstream.md``):

* ``msd``: Medical Segmentation Decathlon / nnU-Net ``imagesTr/`` + ``labelsTr/``; a case is
  ``<case>.nii.gz`` (3D, or 4D with the channels on axis 4, MSD BrainTumour: ``[X, Y, Z, 4]``) or
  nnU-Net ``<case>_0000 … _000N`` (any readable extension); channel names from dataset.json
  ``modality`` (MSD) or ``channel_names`` (nnU-Net v2), label names from its ``labels``;
* ``brats``: one folder per case, ``<case>_{t1,t1ce,t2,flair}.nii.gz`` + ``<case>_seg.nii.gz``
  (2018–2021), or ``<case>-{t1n,t1c,t2w,t2f}.nii.gz`` + ``<case>-seg.nii.gz`` (2023+);
* ``folder``: ``images/<case>.<ext>`` + ``labels/<case>.<ext>`` (any readable image, an image
  may be a DICOM series folder, a label may be a DICOM-SEG ``.dcm``);
* ``dicom-seg``: one folder per case holding a DICOM series and one SEG object of it;
* ``csv``: classification table ``image,label[,patient]``, image paths relative to the CSV.

Nothing is read here beyond file names, dataset.json, the CSV and DICOM headers; a case that
is visibly incomplete goes to ``skipped`` with its reason.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from mrifoundry.tasks.ingest.labelled3d.dicom_seg import is_dicom_seg
from mrifoundry.tasks.ingest.labelled3d.readers import dicom_files, is_dicom_file, is_image_path, split_ext
from mrifoundry.tasks.ingest.nnunet import label_names, read_nnunet

LAYOUTS = ("msd", "brats", "folder", "dicom-seg", "csv")
#: layout → datasets.source
SOURCES = {"msd": "msd", "brats": "brats", "folder": "image-folder", "dicom-seg": "dicom-seg",
           "csv": "classification-csv"}
#: BraTS channel suffixes, one list per naming convention, in the same modality order
BRATS_CHANNELS = (("t1", "t1ce", "t2", "flair"), ("t1n", "t1c", "t2w", "t2f"))
BRATS_LABELS = ({1: "necrotic_core", 2: "edema", 4: "enhancing"}, {1: "necrotic_core", 2: "edema", 3: "enhancing"})
_BRATS_RE = re.compile(r"^(.+)[_-](t1|t1ce|t2|flair|t1n|t1c|t2w|t2f|seg)\.(nii\.gz|nii)$", re.IGNORECASE)
_BRATS23_CASE = re.compile(r"^(BraTS-[A-Za-z]+-\d+)-\d+$")  # BraTS 2023: <patient>-<timepoint>


@dataclass
class Case:
    case: str                          # the dataset's own case name (made safe later)
    images: list[Path]                 # channel files in order (a 4D file holds several channels)
    label: Path | None = None          # label image or DICOM-SEG file; None for classification
    patient: str | None = None         # patient label; None = the case name
    class_label: str | None = None


@dataclass
class Found:
    layout: str
    task: str                          # segmentation-3d | classification
    cases: list[Case]
    skipped: list[dict] = field(default_factory=list)
    channels: list[str] | None = None  # channel names, when the layout says
    label_names: dict[int, str] | None = None


def _visible(d: Path) -> list[Path]:
    return [p for p in sorted(d.iterdir()) if not p.name.startswith(".")]


def _stem(name: str) -> str | None:
    return s[0] if (s := split_ext(name)) else None


def find_msd(root: Path) -> Found:
    """``imagesTr/`` + ``labelsTr/`` (MSD, nnU-Net v1/v2; :func:`~tasks.ingest.nnunet.read_nnunet`).

    Raises:
        FileNotFoundError: either folder is missing.
    """
    found = read_nnunet(root, _stem)
    cases, skipped = [], list(found.skipped)
    for c in found.cases:
        if (files := c.channel_list()) is None:
            have = sorted(c.channels)
            skipped.append({"case": c.case, "reason": f"case {c.case}: channel files {have} are not "
                                                      f"_0000.._{len(have) - 1:04d}"})
        else:
            cases.append(Case(c.case, files, c.label))
    skipped.sort(key=lambda s: s["case"])
    return Found("msd", "segmentation-3d", cases, skipped, found.channel_names(), found.label_names())


def find_brats(root: Path) -> Found:
    """One folder per case with four modalities and a ``seg`` file (2018–2021 or 2023 names)."""
    cases, skipped, conventions = [], [], []
    for d in (p for p in _visible(root) if p.is_dir()):
        files = {m.group(2).lower(): p for p in _visible(d) if (m := _BRATS_RE.match(p.name))}
        conv = next((i for i, names in enumerate(BRATS_CHANNELS) if all(n in files for n in names)), None)
        if conv is None:
            have = sorted(k for k in files if k != "seg")
            want = " or ".join("/".join(names) for names in BRATS_CHANNELS)
            skipped.append({"case": d.name, "reason": f"case {d.name}: modalities {have}, expected {want}"})
            continue
        if "seg" not in files:
            skipped.append({"case": d.name, "reason": f"case {d.name}: no segmentation (<case>_seg.nii.gz)"})
            continue
        conventions.append(conv)
        m = _BRATS23_CASE.match(d.name)
        cases.append(Case(d.name, [files[n] for n in BRATS_CHANNELS[conv]], files["seg"],
                          patient=m.group(1) if m else None))
    conv = max(set(conventions), key=conventions.count) if conventions else 0
    return Found("brats", "segmentation-3d", cases, skipped, list(BRATS_CHANNELS[conv]), dict(BRATS_LABELS[conv]))


def _stems(d: Path, labels: bool) -> dict[str, Path]:
    out = {}
    for p in _visible(d):
        if (s := split_ext(p.name)) is not None:
            out[s[0]] = p
        elif p.is_dir() and is_image_path(p):
            out[p.name] = p
        elif labels and p.suffix.lower() == ".dcm":
            out[p.stem] = p
    return out


def find_folder(root: Path) -> Found:
    """``images/`` + ``labels/`` paired by name (extension left out).

    Raises:
        FileNotFoundError: either folder is missing.
    """
    images_dir, labels_dir = root / "images", root / "labels"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} not found: the folder layout is images/ + labels/")
    images, labels = _stems(images_dir, False), _stems(labels_dir, True)
    cases = [Case(c, [images[c]], labels[c]) for c in sorted(images) if c in labels]
    skipped = [{"case": c, "reason": f"case {c}: image without a label in labels/"} for c in sorted(images)
               if c not in labels]
    skipped += [{"case": c, "reason": f"case {c}: label without an image in images/"} for c in sorted(labels)
                if c not in images]
    return Found("folder", "segmentation-3d", cases, skipped, None, label_names(root))


def find_dicom_seg(root: Path) -> Found:
    """Case folders (or ``root`` itself) holding a DICOM series plus one SEG of it, or an
    image file plus the SEG."""
    dirs = [root] if any(is_dicom_seg(p) for p in _visible(root) if p.is_file()) else \
        [p for p in _visible(root) if p.is_dir()]
    cases, skipped = [], []
    for d in dirs:
        segs = [p for p in dicom_files(d) if is_dicom_seg(p)]
        files = [p for p in _visible(d) if p.is_file() and split_ext(p.name)]
        if len(segs) != 1:
            skipped.append({"case": d.name, "reason": f"case {d.name}: {len(segs)} DICOM-SEG files (expected one)"})
        elif len(files) > 1:
            skipped.append({"case": d.name, "reason": f"case {d.name}: {len(files)} image files beside the SEG"})
        elif files:
            cases.append(Case(d.name, files, segs[0]))
        elif not any(p != segs[0] for p in dicom_files(d)):
            skipped.append({"case": d.name, "reason": f"case {d.name}: a SEG without its image series"})
        else:
            cases.append(Case(d.name, [d], segs[0]))
    return Found("dicom-seg", "segmentation-3d", cases, skipped, None, None)


def find_csv(path: Path) -> Found:
    """Classification table: columns ``image``, ``label`` and optional ``patient``.

    Raises:
        FileNotFoundError: no CSV (``path`` or the single ``*.csv`` of a folder).
        ValueError: the CSV lacks the image/label columns.
    """
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path}: {len(found)} CSV files (the csv layout needs exactly one)")
        path = found[0]
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "image" not in cols or "label" not in cols:
            raise ValueError(f"{path.name}: columns image and label are required (patient optional), got "
                             f"{reader.fieldnames}")
        rows = list(reader)
    cases, skipped, seen = [], [], set()
    for n, r in enumerate(rows, start=2):
        image, label = (r.get(cols["image"]) or "").strip(), (r.get(cols["label"]) or "").strip()
        patient = (r.get(cols["patient"]) or "").strip() if "patient" in cols else ""
        file = path.parent / image
        stem = s[0] if (s := split_ext(file.name)) else file.name
        if not image or not label:
            skipped.append({"case": stem or f"line {n}", "reason": f"line {n}: empty image or label"})
        elif not file.exists() or not is_image_path(file):
            skipped.append({"case": stem, "reason": f"line {n}: {image} is not a readable image"})
        elif stem in seen:
            skipped.append({"case": stem, "reason": f"line {n}: case name {stem!r} already used by another line"})
        else:
            seen.add(stem)
            cases.append(Case(stem, [file], None, patient=patient or None, class_label=label))
    return Found("csv", "classification", cases, skipped, None, None)


def detect_layout(root: Path) -> str:
    """The layout of ``root`` (see the module docstring).

    Raises:
        ValueError: none recognised.
    """
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv"
        raise ValueError(f"{root}: a file, but not a CSV table")
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        return "msd"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "folder"
    subdirs = [p for p in _visible(root) if p.is_dir()]
    if any(_BRATS_RE.match(f.name) for d in subdirs for f in _visible(d)):
        return "brats"
    if any(is_dicom_seg(p) for d in [root, *subdirs] for p in _visible(d) if p.is_file() and is_dicom_file(p)):
        return "dicom-seg"
    if len(list(root.glob("*.csv"))) == 1:
        return "csv"
    raise ValueError(f"{root}: no known layout ({', '.join(LAYOUTS)}; see docs/downstream.md)")


def find_cases(root: Path, layout: str = "auto") -> Found:
    """Cases of ``root`` in ``layout`` (``auto``: :func:`detect_layout`).

    Raises:
        ValueError: unknown layout / none recognised; FileNotFoundError: layout folders missing.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} not found")
    if layout == "auto":
        layout = detect_layout(root)
    finders = {"msd": find_msd, "brats": find_brats, "folder": find_folder, "dicom-seg": find_dicom_seg,
               "csv": find_csv}
    if layout not in finders:
        raise ValueError(f"layout {layout!r}: one of auto, {', '.join(LAYOUTS)}")
    return finders[layout](root)


__all__ = ["BRATS_CHANNELS", "LAYOUTS", "SOURCES", "Case", "Found", "detect_layout", "find_brats", "find_cases",
           "find_csv", "find_dicom_seg", "find_folder", "find_msd"]
