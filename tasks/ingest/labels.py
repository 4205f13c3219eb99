"""Label selection and merging for a downstream task.

Two forms of ``labels`` (JSON keys may be strings):

* values → values, ``{1: 1, 2: 1, 4: 2}``: each source value becomes the given output value;
  an output value's name is its source value's name (names joined with ``+`` when several
  merge into it);
* regions, ``{"whole_tumor": [1, 2, 4], "tumor_core": [1, 4], "enhancing": [4]}``: region
  ``i`` (in the order given) becomes output value ``i + 1``, named by its key.

A label map holds one value per voxel, so overlapping regions cannot each keep all their
voxels: a source value listed in several regions goes to the **last** of them. List nested
regions from the outermost to the innermost (BraTS: WT, TC, ET); the map then holds each
voxel's innermost region and region ``i`` is recovered as ``label >= i + 1``. Source values
in no region / not mapped become background 0, or fail the case when ``strict``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrifoundry.errors import UsageError


class CaseError(ValueError):
    """A case (or png-list line) that cannot be ingested; it is skipped with this message."""


@dataclass(frozen=True)
class LabelMapping:
    lut: dict[int, int]      # source value → output value
    names: dict[int, str]    # output value → name (0 = background)
    strict: bool = False
    nested: bool = False     # a {name: [values]} mapping: value v stands for region ≥ v

    def apply(self, labels: np.ndarray, what: str) -> np.ndarray:
        """Map a uint8 label array.

        Raises:
            CaseError: ``strict`` and a non-zero value present that the mapping leaves out.
        """
        present = {int(v) for v in np.unique(labels)}
        unmapped = sorted(v for v in present if v != 0 and v not in self.lut)
        if unmapped and self.strict:
            raise CaseError(f"{what}: label values {unmapped} are not in the label mapping (strict)")
        lut = np.zeros(256, dtype=np.uint8)
        for src, dst in self.lut.items():
            lut[src] = dst
        return lut[labels]

    def to_json(self) -> str:
        """What the catalog's ``datasets.label_mapping`` records."""
        import json
        return json.dumps({"lut": {str(k): v for k, v in sorted(self.lut.items())}, "strict": self.strict,
                           "nested": self.nested})


def _int(v, what: str) -> int:
    # ints, or digit strings (JSON object keys, Prefect parameters); not 1.5, True or "a"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        out = int(v)
    elif isinstance(v, str) and v.strip().lstrip("-").isdigit():
        out = int(v.strip())
    else:
        raise UsageError(f"label mapping: {what} {v!r} is not an integer")
    if not 0 <= out <= 255:
        raise UsageError(f"label mapping: {what} {out} outside 0..255")
    return out


def parse_labels(labels: dict | None, source_names: dict[int, str] | None = None,
                 strict: bool = False) -> LabelMapping | None:
    """A :class:`LabelMapping` from the ingest's ``labels`` argument (None → no mapping).

    Raises:
        ValueError: mixed or malformed forms, region values of 0, output values over 255.
    """
    if not labels:
        return None
    source_names = {int(k): str(v) for k, v in (source_names or {}).items()}
    if all(isinstance(v, (list, tuple)) for v in labels.values()):
        if len(labels) > 255:
            raise UsageError("label mapping: more than 255 regions")
        lut: dict[int, int] = {}
        names = {0: "background"}
        for i, (name, values) in enumerate(labels.items(), start=1):
            if not values:
                raise UsageError(f"label mapping: region {name!r} lists no values")
            for v in values:
                src = _int(v, f"value of region {name!r}")
                if src == 0:
                    raise UsageError(f"label mapping: region {name!r} lists 0 (background)")
                lut[src] = i  # later regions win: nested regions from outermost to innermost
            names[i] = str(name)
        return LabelMapping(lut, names, strict, nested=True)
    if any(isinstance(v, (list, tuple, dict)) for v in labels.values()):
        raise UsageError("label mapping: use either {value: value} or {name: [values]}, not both")
    lut = {_int(k, "source value"): _int(v, "output value") for k, v in labels.items()}
    merged: dict[int, list[str]] = {}
    for src, dst in sorted(lut.items()):
        merged.setdefault(dst, []).append(source_names.get(src, "background" if src == 0 else f"label_{src}"))
    names = {0: "background"}
    names.update({dst: "+".join(n) for dst, n in merged.items() if dst != 0})
    return LabelMapping(lut, names, strict)


__all__ = ["CaseError", "LabelMapping", "parse_labels"]
