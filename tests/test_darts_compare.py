"""`harness.compare --space darts`: all five methods search the DARTS space and each writes a
valid genotype with its size at the evaluation settings (no ground truth in this space)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from spaces.darts import Genotype, count_params

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("spos", "hopnas", "nap", "dnal", "pdarts")


@pytest.mark.smoke
def test_every_method_derives_a_genotype_in_the_darts_space(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "NAS_HARNESS_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "harness.compare", "--space", "darts", "--methods", ",".join(METHODS),
                           "--budget", "smoke", "--dataset", "synthetic", "--output", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["method"]) == sorted(METHODS) and set(summary["status"]) == {"ok"}
    for method in METHODS:
        derived = json.loads((out / "trials" / f"{method}-seed0" / "derived.json").read_text())
        genotype = Genotype.from_str(derived["genotype"])  # valid: parses and validates
        assert derived["space"] == "darts" and derived["params"] == count_params(genotype, 36, 20, 10)
        assert derived["macs"] > 0 and derived["imagenet_params"] > derived["params"]
    report = (out / "report.md").read_text()
    assert "## DARTS space: the genotype each method derived" in report and "kendall_tau" not in report


def test_darts_space_refuses_a_benchmark_and_unknown_methods(tmp_path, monkeypatch, capsys):
    from harness.compare import main

    monkeypatch.setenv("NAS_HARNESS_CACHE", str(tmp_path / "cache"))
    for extra, message in ((["--methods", "spos", "--benchmark", "/some/table.csv"], "no tabular ground truth"),
                           (["--methods", "synflow"], "unknown method 'synflow' in the darts space")):
        code = main(["--space", "darts", "--dataset", "synthetic", "--budget", "smoke", *extra,
                     "--output", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
