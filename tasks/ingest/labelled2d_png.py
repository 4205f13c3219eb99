"""2D PNG image/mask pairs as a labelled dataset, in the layout of :mod:`tasks.ingest.labelled2d`:
MRI-CORE's list files (one ``image,mask`` or ``image mask`` pair a line) and mask folders
(``images/<name>.png`` beside ``masks/<name>.png``)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from mrifoundry.tasks.ingest.labelled2d import (as_label_u8, check_dataset_id, check_split, finish_dataset, new_workdir,
                                                safe_id, slice_row)
from mrifoundry.tasks.ingest.labels import CaseError
from mrifoundry.tasks.ingest.prep import Prep

__all__ = ["ingest_mask_folder", "ingest_png_list", "mri_core_patient_id", "read_png_list"]


def mri_core_patient_id(path: str | Path) -> str:
    """MRI-CORE's patient rule: ``fname.split('-')[0] + fname.split('-')[1]`` on the file name
    without extension (the first two '-' fields, concatenated); a name without '-' is its own id."""
    parts = Path(path).name.split(".")[0].split("-")
    return parts[0] + parts[1] if len(parts) > 1 else parts[0]


def read_png_list(list_file: Path, base_dir: Path | None = None) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of an MRI-CORE list file; relative paths are resolved against
    ``base_dir`` (default: the list file's folder). Blank lines and '#' comments are ignored."""
    list_file = Path(list_file)
    base = Path(base_dir) if base_dir is not None else list_file.parent
    pairs = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in (line.split(",") if "," in line else line.split())]
        if len(fields) != 2 or not all(fields):
            raise ValueError(f"{list_file.name} line {n}: expected 'image,mask' or 'image mask'")
        pairs.append(tuple(base / f for f in fields))
    return pairs


def _read_png(path: Path, what: str) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
            im = im.convert("L")
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise CaseError(f"{what} {path.name}: expected a 2D grayscale image, got shape {arr.shape}")
    return arr


def ingest_png_list(research: Path, list_file: Path, dataset_id: str, *, base_dir: Path | None = None,
                    source: str = "png-list", **options) -> dict:
    """Ingest an MRI-CORE list file of 2D image/mask PNG pairs (options: :func:`ingest_png_pairs`).

    Raises:
        ValueError: malformed list file, bad arguments, or nothing could be ingested.
    """
    pairs = read_png_list(Path(list_file), base_dir)
    return ingest_png_pairs(research, pairs, dataset_id, root=str(Path(list_file).resolve()), source=source, **options)


def ingest_mask_folder(research: Path, root: Path, dataset_id: str, *, images: str = "images", masks: str = "masks",
                       source: str = "mask-folder", **options) -> dict:
    """Ingest ``root/images/<name>.png`` with ``root/masks/<name>.png`` (options: :func:`ingest_png_pairs`);
    an image without its mask is skipped with the reason.

    Raises:
        FileNotFoundError: no ``images/`` or ``masks/`` folder.
    """
    root = Path(root)
    for sub in (images, masks):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"{root / sub}: a mask folder needs {images}/ and {masks}/")
    found = sorted(p for p in (root / images).iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    pairs = [(p, root / masks / p.name) for p in found if (root / masks / p.name).is_file()]
    missing = [{"case": p.name, "reason": f"{p.name}: no {masks}/{p.name}"} for p in found
               if not (root / masks / p.name).is_file()]
    return ingest_png_pairs(research, pairs, dataset_id, root=str(root.resolve()), source=source, skipped=missing,
                            **options)


def ingest_png_pairs(research: Path, pairs: list[tuple[Path, Path]], dataset_id: str, *, root: str, source: str,
                     patient_regex: str | None = None, split: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0,
                     keep_empty: bool = True, label_names: dict | None = None, prep: Prep = Prep(),
                     skipped: list[dict] | None = None) -> dict:
    """Ingest (image, mask) PNG pairs into the labelled layout.

    Patient ids come from :func:`mri_core_patient_id` on the image file name, or from
    ``patient_regex`` (``re.search`` on the file name; group 1 if it has groups, else the match).
    Images are re-normalised per slice (min-max to uint8); masks keep their values, except that
    masks holding only {0, 255} become {0, 1}. ``slice_index`` is the pair's order among its
    patient's lines; spacing is unknown (null). A pair that cannot be read, whose shapes differ
    or whose name does not match the regex is skipped with its reason. ``prep``: label mapping
    and imported split.

    Raises:
        ValueError: bad arguments, or nothing could be ingested.
    """
    check_dataset_id(dataset_id)
    check_split(split)
    research = Path(research)
    rx = re.compile(patient_regex) if patient_regex else None
    work = new_workdir(research, dataset_id)
    try:
        rows: list[dict] = []
        values: set[int] = set()
        skipped = list(skipped or [])
        seen: dict[str, str] = {}
        per_patient: dict[str, int] = {}
        for ip, mp in pairs:
            try:
                if rx:
                    m = rx.search(ip.name)
                    if not m:
                        raise CaseError(f"{ip.name}: patient regex does not match")
                    raw = m.group(1) if rx.groups else m.group(0)
                else:
                    raw = mri_core_patient_id(ip)
                patient = safe_id(raw)
                if seen.setdefault(patient, raw) != raw:
                    raise CaseError(f"{ip.name}: patient id {patient!r} already used by {seen[patient]!r}")
                img = _read_png(ip, "image").astype(np.float64)
                mask = _read_png(mp, "mask")
                if img.shape != mask.shape:
                    raise CaseError(f"{ip.name}: image shape {img.shape} != mask shape {mask.shape}")
                mask = as_label_u8(mask, mp.name)
                uniq = np.unique(mask)
                if uniq.size and set(uniq.tolist()) <= {0, 255} and 255 in uniq:
                    mask = (mask > 0).astype(np.uint8)  # binary masks saved as 0/255 for viewing
                mask = prep.mask(mask, mp.name)
            except CaseError as e:
                skipped.append({"case": ip.name, "reason": str(e)})
                continue
            except OSError as e:  # missing/corrupt file: skip the pair, go on
                skipped.append({"case": ip.name, "reason": f"{ip.name}: cannot read ({type(e).__name__})"})
                continue
            uniq = np.unique(mask)
            index = per_patient.get(patient, 0)
            per_patient[patient] = index + 1
            if not keep_empty and not mask.any():
                continue
            values.update(int(v) for v in uniq)
            rows.append(slice_row(dataset_id, patient, index, img, mask, work, (None, None, None)))
        return finish_dataset(research, dataset_id, source, root, work, rows, values, label_names, split, seed,
                              skipped, prep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
