"""Frozen config dataclasses <-> JSON, typed ``--set`` coercion, and the budget names.

A leaf module (it imports nothing of the project), so that method configs (``methods/``),
training recipes (``benchmarks/train.py``) and the experiment config (``harness/``) share one
implementation of the round trip and of command-line overrides.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, TypeVar, cast

BUDGETS: tuple[str, ...] = ("smoke", "cpu", "paper")
"""The named budgets of every preset (DESIGN.md): seconds for tests, a laptop, the published schedule."""

CPU_SEARCH_MACS = 1e13
"""The ``cpu`` budget's search compute per trial, the same for every method: multiply-adds processed
by the search (every conv/linear forward, and twice that again where a backward follows; ranking
evaluations excluded), as ``spaces.measure.MacMeter`` counts them and ``history.csv`` records them
(``search_macs``). Each NB201 method's ``cpu`` preset sets its epochs and per-epoch images to land
near it (set from the per-epoch costs measured on the development sample); single-path methods
therefore see the whole search half. About 5-6 CPU-minutes on one core of the development machine
(27-34 x 10^9 multiply-adds per second), so the default job, hopnas and nap side by side with one
ranking each, takes about 8 minutes on 2 cores."""

_C = TypeVar("_C")


def check_budget(budget: str) -> str:
    """``budget`` if it is one of ``BUDGETS``; otherwise a ValueError naming them."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; budgets: {', '.join(BUDGETS)}")
    return budget


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cast(Any, cls))}


def config_from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
    """Build a frozen config dataclass from a JSON-like dict; unknown keys raise ValueError."""
    names = _fields(cls)
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__qualname__} field(s) {unknown}; known fields: {sorted(names)}")
    # JSON turns tuples into lists: restore them so the frozen config stays hashable.
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The JSON-safe dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def replace_fields(cfg: _C, changes: Mapping[str, Any]) -> _C:
    """``cfg`` with ``changes`` applied through the JSON round trip (so validation runs again)."""
    if not changes:
        return cfg
    return config_from_dict(type(cfg), {**config_to_dict(cfg), **changes})


def coerce_field(cls: type, key: str, text: str) -> Any:
    """Parse a command-line ``key=value`` override into the type of that config field.

    The type is the field's default's: bool (true/false/1/0), int, float, a tuple (a comma list or
    a JSON list, elements typed like the default's), else the text itself (a ``None`` default
    also takes ``none``/``null``).
    """
    names = _fields(cls)
    if key not in names:
        raise ValueError(f"unknown {cls.__qualname__} field {key!r}; known fields: {sorted(names)}")
    field = names[key]
    current = field.default if field.default is not dataclasses.MISSING else None
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{key} expects true/false, got {text!r}")
            return text.lower() in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            items = json.loads(text) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
            kind = type(current[0]) if current else str  # elements typed like the default's
            return tuple(kind(v) for v in items)
        if current is None and text.lower() in ("none", "null"):
            return None
    except ValueError as err:
        if str(err).startswith(key):
            raise
        kind_name = type(current).__name__ if not isinstance(current, tuple) else "comma list"
        raise ValueError(f"{key} expects a {kind_name}, got {text!r}") from None
    return text
