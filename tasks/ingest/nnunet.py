"""The one reader of nnU-Net / Medical Segmentation Decathlon folders, for the 2D and 3D ingests.

``imagesTr/`` + ``labelsTr/`` (or ``imagesTs/`` + ``labelsTs/``) and ``dataset.json``. A case's
image is either ``<case>.<ext>`` (MSD: 3D, or 4D with the channels on axis 4) or the channel
files ``<case>_0000 … _000N`` (nnU-Net); the label is ``labels*/<case>.<ext>``. Channel names
come from dataset.json ``channel_names`` (nnU-Net v2) or ``modality`` (MSD), label names from
its ``labels`` ({name: value} in v2, {"value": name} in MSD). Only names are read here, never
voxels; which extensions count is the caller's (``stem``: file name → case stem, or None).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_CHANNEL = re.compile(r"(.+)_(\d{4})")


@dataclass
class NnunetCase:
    case: str
    channels: dict[int, Path]          # channel index → file; a file without a suffix is channel 0
    label: Path

    def channel_list(self) -> list[Path] | None:
        """The channel files in order, or None when they are not ``_0000 … _000N`` without gaps."""
        idx = sorted(self.channels)
        return [self.channels[i] for i in idx] if idx == list(range(len(idx))) else None


@dataclass
class NnunetFolder:
    root: Path
    cases: list[NnunetCase]            # sorted by case name
    skipped: list[dict] = field(default_factory=list)   # [{case, reason}]: a label or image alone
    meta: dict = field(default_factory=dict)             # dataset.json ({} when there is none)

    def label_names(self) -> dict[int, str] | None:
        """{value: name} of dataset.json ``labels``; region labels (lists, nnU-Net v2) are left out."""
        out = {}
        for k, v in (self.meta.get("labels") or {}).items():
            if isinstance(v, int):
                out[v] = k
            elif str(k).lstrip("-").isdigit():
                out[int(k)] = str(v)
        return out or None

    def channel_names(self) -> list[str] | None:
        named = self.meta.get("channel_names") or self.meta.get("modality")
        if not isinstance(named, dict):
            return None
        try:
            return [str(named[k]) for k in sorted(named, key=int)]
        except (TypeError, ValueError):
            return None


def dataset_json(root: Path) -> dict:
    path = Path(root) / "dataset.json"
    return json.loads(path.read_text()) if path.exists() else {}


def label_names(root: Path) -> dict[int, str] | None:
    """Label names of ``root/dataset.json`` (None without one): see :meth:`NnunetFolder.label_names`."""
    return NnunetFolder(Path(root), [], meta=dataset_json(root)).label_names()


def _visible(d: Path) -> list[Path]:
    return [p for p in sorted(d.iterdir()) if not p.name.startswith(".")]


def read_nnunet(root: Path, stem: Callable[[str], str | None], split: str = "Tr") -> NnunetFolder:
    """Pair ``images<split>/`` with ``labels<split>/`` by case.

    A file ``<x>_NNNN`` is channel NNNN of case ``<x>`` unless ``<x>_NNNN`` is itself a label's
    name; when a case has both channel files and a whole file, the channel files win.

    Raises:
        FileNotFoundError: either folder is missing.
    """
    root = Path(root)
    images_dir, labels_dir = root / f"images{split}", root / f"labels{split}"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} not found: expected the nnU-Net/MSD layout "
                                    f"images{split}/ + labels{split}/")
    labels = {s: p for p in _visible(labels_dir) if (s := stem(p.name))}
    whole: dict[str, Path] = {}
    parts: dict[str, dict[int, Path]] = {}
    for p in _visible(images_dir):
        if not (s := stem(p.name)):
            continue
        m = _CHANNEL.fullmatch(s)
        if m and s not in labels:
            parts.setdefault(m.group(1), {})[int(m.group(2))] = p
        else:
            whole[s] = p
    cases, skipped = [], []
    for case in sorted(set(labels) | set(whole) | set(parts)):
        if case not in labels:
            skipped.append({"case": case, "reason": f"case {case}: image without a label in labels{split}/"})
        elif case in parts or case in whole:
            cases.append(NnunetCase(case, parts.get(case) or {0: whole[case]}, labels[case]))
        else:
            skipped.append({"case": case, "reason": f"case {case}: label without an image in images{split}/"})
    return NnunetFolder(root, cases, skipped, dataset_json(root))


__all__ = ["NnunetCase", "NnunetFolder", "dataset_json", "label_names", "read_nnunet"]
