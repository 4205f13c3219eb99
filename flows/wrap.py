"""A Prefect flow whose parameters are a params model's fields (mrifoundry/params.py).

Prefect builds a flow's parameter schema, its validation and its deployment form from the
function's signature; here the signature is made from the model, so defaults and
descriptions are written once. The wrapped function receives the validated model.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, TypeVar

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

P = TypeVar("P", bound=BaseModel)


def model_signature(model: type[BaseModel]) -> inspect.Signature:
    """Keyword parameters in the model's field order, required ones first."""
    required, optional = [], []
    for name, f in model.model_fields.items():
        default = inspect.Parameter.empty if f.is_required() else (
            f.default if f.default is not PydanticUndefined else f.default_factory())
        param = inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                  annotation=f.annotation)
        (required if default is inspect.Parameter.empty else optional).append(param)
    return inspect.Signature(required + optional, return_annotation=dict)


def takes(model: type[P]) -> Callable[[Callable[[P], dict]], Callable[..., dict]]:
    """``fn(params: model) -> dict`` → ``fn(**fields) -> dict`` with the model's signature and a
    docstring that lists the fields (Prefect shows it as the parameters' help)."""
    def deco(fn: Callable[[P], dict]) -> Callable[..., dict]:
        sig = model_signature(model)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs) -> dict:
            bound = sig.bind(*args, **kwargs)
            return fn(model(**bound.arguments))

        wrapper.__signature__ = sig
        wrapper.__annotations__ = {p.name: p.annotation for p in sig.parameters.values()} | {"return": dict}
        del wrapper.__wrapped__     # inspect.signature must not follow it back to fn(params)
        args = "\n".join(f"    {n}: {f.description or ''}" for n, f in model.model_fields.items())
        wrapper.__doc__ = f"{(fn.__doc__ or '').strip()}\n\nArgs:\n{args}\n"
        return wrapper
    return deco
