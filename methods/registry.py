"""The method registry: every built-in method listed by name, in one place.

The concrete methods import only ``methods.base``; this module imports each of them
explicitly, so the dependency runs one way (no import circle) and a missing or renamed method
file fails here at import with ``ModuleNotFoundError`` naming it. ``register`` adds a user's own
method class (duplicate names raise).
"""
from __future__ import annotations

import sys
from typing import Any, TypeVar

from methods.baselines import FlopsBaseline, ParamsBaseline, RandomBaseline
from methods.dnal import DNAL
from methods.hopnas import HOPNAS
from methods.nap import NAP
from methods.pdarts import PDARTS
from methods.proxies import PROXY_METHODS
from methods.spos import SPOS

METHODS: dict[str, Any] = {}  # name -> method class (a methods.base.SearchMethod)
_M = TypeVar("_M", bound=type)


def register(cls: _M) -> _M:
    """Add a method class to ``METHODS`` under ``cls.name`` (a different class of the same name raises)."""
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(f"method name {name!r} is already registered by {METHODS[name].__module__}")
    METHODS[name] = cls
    return cls


BUILTIN: tuple[type, ...] = (SPOS, HOPNAS, NAP, DNAL, PDARTS, *PROXY_METHODS, ParamsBaseline, FlopsBaseline,
                             RandomBaseline)
for _cls in BUILTIN:
    register(_cls)


def get_method(name: str) -> Any:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def available_methods() -> list[str]:
    return sorted(METHODS)


def describe(name: str) -> str:
    """One line about a registered method: its ``summary``, else its module's first line."""
    cls = get_method(name)
    summary = getattr(cls, "summary", None)
    if summary:
        return str(summary)
    doc = (sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(". ") if doc else ""
