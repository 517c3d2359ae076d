"""What every trial and CLI writes beside its results: JSON files, provenance, the device.

Shared by the search trial (``harness.trial``), the from-scratch trial
(``harness.evaluation_trial``) and both CLIs, so each is written one way.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def json_safe(obj: Any) -> Any:
    """``obj`` with numpy scalars and tensors turned into plain Python values (recursively)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (write a sibling, then rename): never a half file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def trial_outcome(trial_dir: Path, columns: Sequence[str], reason: str | None = None) -> dict[str, Any]:
    """How a trial ended, from its directory alone: ``status`` ok (its ``result.json``, the
    ``columns`` of it), failed (``error.txt``'s last line, else ``reason``) or incomplete; for an
    unfinished trial, the epochs and wall time its ``history.csv`` reached."""
    result = read_json(trial_dir / "result.json")
    if result is not None:
        return {**{k: result.get(k) for k in columns if k in result}, "status": "ok"}
    row: dict[str, Any]
    if (trial_dir / "error.txt").exists():
        row = {"status": "failed", "error": (trial_dir / "error.txt").read_text().strip().splitlines()[-1][:500]}
    elif reason:
        row = {"status": "failed", "error": reason}
    else:
        row = {"status": "incomplete", "error": "no result yet (interrupted? rerun with --resume)"}
    if (trial_dir / "history.csv").exists():
        import pandas as pd

        history = pd.read_csv(trial_dir / "history.csv")
        if len(history):
            row.update(epochs=int(history["epoch"].iloc[-1]), wall_s=float(history["wall_s"].iloc[-1]))
    return row


def resolve_path(text: str | None) -> str | None:
    """An absolute path (trials run in their own working directories), or None."""
    return str(Path(text).expanduser().resolve()) if text else None


def select_device(pref: str) -> torch.device:
    """``auto``: CUDA when torch sees it, else the CPU; ``cuda`` insists; ``cpu`` stays there."""
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no GPU; use --device cpu or auto")
        return torch.device("cuda")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def provenance() -> dict[str, Any]:
    """Code and package versions of the driver (each trial adds its device and host)."""
    import pandas as pd
    import torchvision

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": np.__version__, "pandas": pd.__version__}
    try:
        import ray

        versions["ray"] = ray.__version__
    except ImportError:  # the GPU machine runs trials in-process, without Ray
        pass
    return {"versions": versions, "git_sha": git_sha(), "argv": sys.argv}


def git_sha() -> str | None:
    """The checkout's commit (``-dirty`` when tracked files changed), or None outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip() or None
    return f"{sha}-dirty" if sha and dirty.stdout.strip() else sha
