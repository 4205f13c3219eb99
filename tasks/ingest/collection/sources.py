"""Which files of a NIfTI collection are images, and whose: BIDS entities and sidecars.

Two layouts:

* ``bids``: ``sub-<label>[/ses-<label>]/<datatype>/sub-<label>[_ses-<label>][_<key>-<value>…]_<suffix>.nii[.gz]``
  (BIDS 1.9 raw data; ``derivatives/``, ``sourcedata/``, ``code/`` and dot-folders are skipped). Sidecar
  JSON follows the inheritance principle: every ``*_<suffix>.json`` from the dataset root down to the
  image's folder whose entities are a subset of the image's is merged, deeper files winning.
* ``nifti``: any ``*.nii``/``*.nii.gz`` below the root; the subject is the first folder under the
  root (the file stem for files at the top), the session the second folder when there are three
  levels; a ``<stem>.json`` beside the image is its sidecar.

We parse the BIDS names here instead of using pybids on purpose: ingest needs entities and sidecar
inheritance only, and pybids brings SQLAlchemy, pandas, formulaic and a layout database (docs/ingest.md).
A broken symlink (a DataLad/git-annex file whose content was not fetched) is still a source, so it
gets a reason instead of vanishing. Sources hold raw labels and paths: they stay in the restricted zone.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Source", "bids_sources", "find_sources", "nifti_sources", "parse_entities"]

_NII = (".nii.gz", ".nii")
_SKIP_TOP = {"derivatives", "sourcedata", "code", "stimuli", "phenotype"}
# key-value entities of BIDS 1.9 in their canonical order (datatype and suffix are not key-value)
ENTITY_ORDER = ("sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec", "dir",
                "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split", "recording",
                "chunk", "seg", "res", "den", "label", "desc")
_PAIR = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9+]+)$")


@dataclass
class Source:
    path: Path                      # the image file
    rel: str                        # path relative to the collection root (restricted: may hold labels)
    subject: str                    # raw subject label (restricted)
    session: str                    # raw session label, '' when none (restricted)
    entities: dict[str, str] = field(default_factory=dict)   # BIDS: every entity incl. datatype, suffix
    sidecar: dict = field(default_factory=dict)              # merged sidecar JSON (restricted: raw)
    sidecar_files: list[Path] = field(default_factory=list)
    sidecar_error: str | None = None  # a sidecar that does not parse (named by file name only)


def strip_nii(name: str) -> str | None:
    for ext in _NII:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def parse_entities(stem: str) -> dict[str, str] | None:
    """``sub-01_ses-a_acq-mp2rage_T1w`` → {sub, ses, acq, suffix}; None when not a BIDS name."""
    parts = stem.split("_")
    if len(parts) < 2 or not re.fullmatch(r"[a-zA-Z0-9]+", parts[-1]):
        return None
    out = {}
    for p in parts[:-1]:
        m = _PAIR.match(p)
        if not m or m.group(1) in out:
            return None
        out[m.group(1)] = m.group(2)
    if "sub" not in out:
        return None
    out["suffix"] = parts[-1]
    return out


def _sidecar_entities(stem: str) -> dict[str, str] | None:
    """Entities of a sidecar name; unlike images, a top-level sidecar has no ``sub``."""
    parts = stem.split("_")
    out = {}
    for p in parts[:-1]:
        m = _PAIR.match(p)
        if not m:
            return None
        out[m.group(1)] = m.group(2)
    out["suffix"] = parts[-1]
    return out


def _merge_sidecars(root: Path, image: Path, ents: dict[str, str]) -> tuple[dict, list[Path], str | None]:
    merged: dict = {}
    used: list[Path] = []
    error = None
    folders = [root, *[root.joinpath(*image.relative_to(root).parts[:i]) for i in range(1, len(image.relative_to(root).parts))]]
    for folder in folders:   # shallow → deep: deeper files win (inheritance principle)
        for js in sorted([*folder.glob(f"*_{ents['suffix']}.json"), *folder.glob(f"{ents['suffix']}.json")]):
            se = _sidecar_entities(js.name[:-5])
            if se is None or se.get("suffix") != ents["suffix"]:
                continue
            if any(ents.get(k) != v for k, v in se.items() if k != "suffix"):
                continue
            try:
                data = json.loads(js.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as e:
                error = f"{js.name}: {type(e).__name__}"
                continue
            merged.update(data)
            used.append(js)
    return merged, used, error


def bids_sources(root: Path) -> tuple[list[Source], list[str]]:
    """Images of a BIDS dataset; returns (sources, names of files that look like images but are not
    BIDS-named, relative to root)."""
    root = Path(root)
    if not (root / "dataset_description.json").exists() and not any(root.glob("sub-*")):
        raise FileNotFoundError(f"{root}: not a BIDS dataset (no dataset_description.json, no sub-* folders)")
    sources, unnamed = [], []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in _SKIP_TOP or any(p.startswith(".") for p in rel.parts) or not (path.is_file() or path.is_symlink()):
            continue
        stem = strip_nii(path.name)
        if stem is None:
            continue
        ents = parse_entities(stem)
        if ents is None or not rel.parts[0].startswith("sub-") or len(rel.parts) < 3:
            unnamed.append(str(rel))
            continue
        ents["datatype"] = rel.parts[-2]
        sidecar, used, error = _merge_sidecars(root, path, ents)
        sources.append(Source(path, str(rel), ents["sub"], ents.get("ses", ""), ents, sidecar, used, error))
    return sources, unnamed


def nifti_sources(root: Path) -> tuple[list[Source], list[str]]:
    """Images of a plain NIfTI folder tree (subject = first folder level)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    sources = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(p.startswith(".") for p in rel.parts) or not (path.is_file() or path.is_symlink()):
            continue
        stem = strip_nii(path.name)
        if stem is None:
            continue
        subject = rel.parts[0] if len(rel.parts) > 1 else stem
        session = rel.parts[1] if len(rel.parts) > 2 else ""
        sidecar, used, error = {}, [], None
        js = path.with_name(stem + ".json")
        if js.exists():
            try:
                sidecar = json.loads(js.read_text(encoding="utf-8"))
                if not isinstance(sidecar, dict):
                    raise ValueError("not a JSON object")
                used = [js]
            except (OSError, ValueError) as e:
                sidecar, error = {}, f"{js.name}: {type(e).__name__}"
        sources.append(Source(path, str(rel), subject, session, {}, sidecar, used, error))
    return sources, []


def find_sources(root: Path, layout: str) -> tuple[list[Source], list[str]]:
    if layout == "bids":
        return bids_sources(root)
    if layout == "nifti":
        return nifti_sources(root)
    raise ValueError(f"layout {layout!r}: bids or nifti")


def dataset_name(root: Path) -> str | None:
    """``Name`` of a BIDS dataset_description.json, if any."""
    try:
        return str(json.loads((Path(root) / "dataset_description.json").read_text()).get("Name") or "") or None
    except (OSError, ValueError):
        return None
