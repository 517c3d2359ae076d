"""The performance benchmark runs (its --quick mode checks nothing about speed)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.smoke
def test_perf_quick_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "perf.json"
    env = {**os.environ, "NAS_HARNESS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "harness.perf", "--quick", "--output", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads(out.read_text())
    names = [r["name"] for r in record["rows"]]
    assert [n for n in names if n != "peer_step"] == ["spos_step", "all_ops_step", "scoring", "fast_scoring",
                                                      "calib_tau", "data", "ray"]
    # the peer row runs when xautodl is installed, and is skipped with the reason otherwise
    if importlib.util.find_spec("xautodl") is None:
        assert "peer_step" not in names and "xautodl" in record["skipped"]["peer_step"]
    else:
        assert "peer_step" in names and "peer_step" not in record["skipped"]
    assert all(r["ratio"] > 0 for r in record["rows"]) and record["memory"]["peak_bytes"] > 0
    assert "spos_step" in proc.stdout and "target" in proc.stdout
