"""How a plain runner maps work over items: in this thread, on threads, or (flows) as Prefect tasks.

A mapper is ``mapper(fn, items) -> iterator of fn(item)`` in the order of ``items``. The runners in
``tasks/`` take one, so the same sequence runs from the CLI without Prefect (:func:`threads`) and
inside a flow, where each item becomes a Prefect task on the flow's task runner
(``flows/mapping.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
Mapper = Callable[[Callable[[T], R], Iterable[T]], Iterator[R]]

__all__ = ["Mapper", "serial", "threads"]


def serial(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """One item after the other, in this thread."""
    return map(fn, items)


def threads(workers: int) -> Mapper:
    """``workers`` threads (results in order; the pool closes when the iterator is exhausted)."""
    if workers <= 1:
        return serial

    def mapper(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[Any]:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(fn, items)
    return mapper
