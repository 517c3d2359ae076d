"""The prepared GPU check runs end to end on the CPU at a tiny size, so it is known to work
before a GPU is ever at hand (the GPU machine has no Ray: nothing on its path may import it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.smoke
def test_device_check_tiny_on_cpu_writes_its_json_and_markdown(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "NAS_HARNESS_CACHE": str(tmp_path / "cache")}
    # Ray must not be needed: hide it, as on the GPU machine (a stub that fails on import).
    blocker = tmp_path / "noray"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('no Ray on the GPU machine')\n")
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(ROOT)])
    proc = subprocess.run([sys.executable, "-m", "harness.device_check", "--tiny", "--device", "cpu",
                           "--output", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    record = json.loads((out / "device_check.json").read_text())
    for phase in ("gpu_tests", "perf", "spos_paper", "all_ops", "sharing"):
        assert record[phase]["status"] == "ok", (phase, record[phase])
    assert "2 passed" in record["gpu_tests"]["summary"]
    spos = record["spos_paper"]
    assert spos["epochs_run"] >= 1 and spos["scored_archs"] == 20 and -1 <= spos["ranking_after_epochs"]["kendall_tau"] <= 1
    assert {"nap", "pdarts", "dnal"} <= set(record["all_ops"]) and record["sharing"]["sharing_ratio"] > 0
    names = {row["name"] for row in record["perf"]["rows"]}
    assert {"spos_step", "fast_scoring", "calib_tau"} <= names and "ray" not in names
    markdown = (out / "device_check.md").read_text()
    assert markdown.startswith("# Device check — cpu") and "## Goals" in markdown
