"""What every parameter model shares: no unknown keys, comma lists, ``none`` voxel sizes."""
from __future__ import annotations

import types
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OUT = Field(None, description="output root (restricted/, research/, state/); default MRIFOUNDRY_OUT, else HOME/out")
RERUN = Literal["missing", "failed", "all"]
RERUN_HELP = "missing: new and failed items; failed: only failed items; all: redo everything"


class Params(BaseModel):
    """Base: unknown parameters are an error (a typo must not silently fall back to a default); a
    tuple or list given as one string is comma-separated (``"0.6,0.2,0.2"``)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _comma_lists(cls, data):
        if isinstance(data, dict):
            for name, f in cls.model_fields.items():
                v = data.get(name)
                if isinstance(v, str) and is_sequence(f.annotation) and name != "nifti_shape":
                    data = {**data, name: [x.strip() for x in v.split(",") if x.strip()]}
        return data

    @field_validator("voxel_size_mm", mode="before", check_fields=False)
    @classmethod
    def _voxel(cls, v):
        return _native(v)


def is_sequence(annotation) -> bool:
    """list[...] or tuple[...], optional or not."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return any(typing.get_origin(a) in (list, tuple) for a in args)


def _shape(v):
    """256x256x128, "256,256,128" or [256, 256, 128] → (256, 256, 128)."""
    if v in (None, "", [], ()):
        return None
    if isinstance(v, str):
        v = v.lower().replace(",", "x").split("x")
    return tuple(int(x) for x in v)


def _native(v):
    """A voxel size of 0 (or "none") keeps the native spacing, like None."""
    return None if v in (0, "0", "none", "native") else v
