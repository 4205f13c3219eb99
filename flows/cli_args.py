"""argparse options made from a params model (mrifoundry/params.py): one shape for every verb.

- Every field is ``--field-name`` (underscores → dashes); ``positional`` fields may also be given
  bare (``mrifoundry sql "SELECT …"``). Required fields are required.
- ``bool``: ``--x`` / ``--no-x``. ``Literal``: its choices. ``list``: comma-separated and repeatable.
  ``tuple``: one string the model parses (``256x256x128``, ``0.6,0.2,0.2``). ``dict``: JSON.
  ``date``: ISO. An optional value takes ``none``.
- Help is the field's description with its default; the model validates the values (one line on
  an error, exit 2: :func:`params_from_args`).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import types
import typing

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from mrifoundry.params import is_sequence

#: extra spellings kept for flags that had another name before the CLI was made from the models
#: (``field`` or ``Model.field``); a bool alias gets its ``--no-`` form too (``--no-png``)
ALIASES = {"voxel_size_mm": ["--voxel-size"], "write_png": ["--png"], "write_nifti": ["--nifti"],
           "ExportBidsParams.check": ["--validate"]}


def _parts(annotation):
    """(the type without None, optional?)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), True
    return annotation, False


def _none_or(convert):
    def parse(s: str):
        return None if s.lower() in ("none", "null") else convert(s)
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _json(s: str):
    try:
        return json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {s!r}") from None


def _default_text(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def add_model_args(p: argparse.ArgumentParser, model: type[BaseModel], positional: tuple[str, ...] = ()) -> None:
    """One option per field of ``model`` (see the module docstring)."""
    for name, f in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        required = f.is_required()
        default = None if required else (f.default if f.default is not PydanticUndefined else f.default_factory())
        help_ = (f.description or "") + ("" if required else f" (default: {_default_text(default)})")
        kind, optional = _parts(f.annotation)
        kw: dict = {"dest": name, "default": argparse.SUPPRESS, "help": help_}
        names = [flag, *ALIASES.get(name, []), *ALIASES.get(f"{model.__name__}.{name}", [])]
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is typing.Literal:
            kw["choices"] = typing.get_args(kind)
            kw["type"] = _none_or(str) if optional else str
        elif is_sequence(f.annotation) and typing.get_origin(kind) is list:
            kw.update(action="extend", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                      metavar="A,B,…")
        elif typing.get_origin(kind) is tuple:
            kw.update(type=_none_or(str) if optional else str, metavar=",".join(["N"] * len(typing.get_args(kind))))
        elif kind is dict or typing.get_origin(kind) is dict:
            kw.update(type=_none_or(_json) if optional else _json, metavar="JSON")
        elif kind is dt.date:
            kw.update(type=_none_or(dt.date.fromisoformat) if optional else dt.date.fromisoformat, metavar="YYYY-MM-DD")
        elif kind in (int, float, str):
            kw["type"] = _none_or(kind) if optional else kind
        else:
            raise TypeError(f"{model.__name__}.{name}: no CLI shape for {f.annotation!r}")
        if name in positional:
            # bare or as the flag: both fill the same field
            p.add_argument(f"_{name}", nargs="?", metavar=name.upper(), help=f"{f.description} (or {flag})",
                           type=kw.get("type", str), default=argparse.SUPPRESS)
        elif required:
            kw["required"] = True
        p.add_argument(*names, **kw)


def params_from_args(model: type[BaseModel], a: argparse.Namespace, positional: tuple[str, ...] = ()) -> BaseModel:
    """The validated model of the parsed options: only what was given, the rest are the model's defaults.

    Raises:
        UsageError: a missing or invalid value (one line naming the option).
    """
    from mrifoundry.errors import UsageError
    given = {k: v for k, v in vars(a).items() if k in model.model_fields}
    for name in positional:
        bare = getattr(a, f"_{name}", None)
        if bare is not None:
            if given.get(name) not in (None, bare):
                raise UsageError(f"{name} given twice (bare and as --{name.replace('_', '-')})")
            given[name] = bare
    try:
        return model(**given)
    except ValidationError as e:
        err = e.errors()[0]
        field = "--" + str(err["loc"][0]).replace("_", "-") if err.get("loc") else ""
        msg = err["msg"].removeprefix("Value error, ")
        raise UsageError(f"{field}: {msg}" if err.get("loc") else msg) from None
