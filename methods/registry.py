"""The method registry: every built-in method listed by space and name, in one place.

The concrete methods import only ``methods.base`` (and their space); this module imports each of
them explicitly, so the dependency runs one way (no import circle) and a missing or renamed
method file fails here at import with ``ModuleNotFoundError`` naming it. ``register`` adds a
user's own method class (duplicate names within a space raise).

Each space has its own table: ``spos`` in the NAS-Bench-201 space (``methods.spos``) and in the
DARTS space (``methods.darts.spos``) are two classes with one name, picked by ``space`` (a class
attribute; ``nb201`` when absent).
"""
from __future__ import annotations

import sys
from typing import Any, TypeVar

from methods.baselines import FlopsBaseline, ParamsBaseline, RandomBaseline
from methods.darts.dnal import DartsDNAL
from methods.darts.hopnas import DartsHOPNAS
from methods.darts.nap import DartsNAP
from methods.darts.pdarts import DartsPDARTS
from methods.darts.spos import DartsSPOS
from methods.dnal import DNAL
from methods.hopnas import HOPNAS
from methods.nap import NAP
from methods.pdarts import PDARTS
from methods.proxies import PROXY_METHODS
from methods.spos import SPOS

SPACES = ("nb201", "darts")
SPACE_METHODS: dict[str, dict[str, Any]] = {space: {} for space in SPACES}  # space -> name -> class
METHODS = SPACE_METHODS["nb201"]  # the NAS-Bench-201 table (the default space)
_M = TypeVar("_M", bound=type)


def space_of(cls: type) -> str:
    return str(getattr(cls, "space", "nb201"))


def register(cls: _M) -> _M:
    """Add a method class to its space's table under ``cls.name`` (a different class of the same
    name in the same space raises)."""
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    space = space_of(cls)
    if space not in SPACE_METHODS:
        raise ValueError(f"{cls.__name__}.space is {space!r}; spaces: {', '.join(SPACES)}")
    table = SPACE_METHODS[space]
    if name in table and table[name] is not cls:
        raise ValueError(f"method name {name!r} is already registered in the {space} space by {table[name].__module__}")
    table[name] = cls
    return cls


BUILTIN: tuple[type, ...] = (SPOS, HOPNAS, NAP, DNAL, PDARTS, *PROXY_METHODS, ParamsBaseline, FlopsBaseline,
                             RandomBaseline, DartsSPOS, DartsHOPNAS, DartsNAP, DartsDNAL, DartsPDARTS)
for _cls in BUILTIN:
    register(_cls)


def get_method(name: str, space: str = "nb201") -> Any:
    if space not in SPACE_METHODS:
        raise KeyError(f"unknown space {space!r}; spaces: {', '.join(SPACES)}")
    table = SPACE_METHODS[space]
    if name not in table:
        where = "" if space == "nb201" else f" in the {space} space"
        raise KeyError(f"unknown method {name!r}{where}; registered methods: {', '.join(sorted(table))}")
    return table[name]


def available_methods(space: str = "nb201") -> list[str]:
    return sorted(SPACE_METHODS[space])


def describe(name: str, space: str = "nb201") -> str:
    """One line about a registered method: its ``summary``, else its module's first line."""
    cls = get_method(name, space)
    summary = getattr(cls, "summary", None)
    if summary:
        return str(summary)
    doc = (sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(". ") if doc else ""
