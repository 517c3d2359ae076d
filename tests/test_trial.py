"""The trial loop in-process (no Ray): artifacts, resume bit-for-bit, failures, scoring CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.compare import build_context
from harness.config import ExperimentConfig
from harness.trial import LocalSession, TrialInterrupted, run_trial, trial_config


def _setup(tmp_path: Path, epochs: int = 3, **exp_changes):
    exp = ExperimentConfig.preset("smoke", dataset="synthetic", epochs=epochs, eval_archs="12",
                                  cache_dir=str(tmp_path / "cache"), **exp_changes)
    out = tmp_path / "run"
    context = build_context(exp, out)
    # fake ground truth, so ranking metrics are computed (a real table is tested in test_compare)
    context.truth = [float(i % 7) + 0.1 * i for i in range(len(context.archs))]
    return exp, context


def _config(exp, method="spos", seed=0, overrides=None):
    return trial_config(exp, method, seed, overrides)


def test_trial_writes_its_artifacts(tmp_path):
    exp, context = _setup(tmp_path, epochs=2, eval_every=1)
    session = LocalSession()
    final = run_trial(_config(exp), context, session)
    trial = Path(context.output) / "trials" / "spos-seed0"
    scores = pd.read_csv(trial / "scores.csv")
    assert list(scores.columns) == ["arch", "score", "unique", "truth"] and len(scores) == 12
    derived = json.loads((trial / "derived.json").read_text())
    assert derived["arch"] == final["derived_arch"] and derived["params"] > 0
    config = json.loads((trial / "config.json").read_text())
    assert config["method_config"]["epochs"] == 2 and config["seed"] == 0 and "versions" in config
    assert config["arch_set"].startswith("seeded sample of 12") and config["device"].startswith("cpu")
    history = pd.read_csv(trial / "history.csv")
    assert list(history["epoch"]) == [1, 2] and history["kendall_tau"].notna().all()  # eval_every=1
    assert [r["epoch"] for r in session.results] == [1, 2, 2] and session.results[-1]["done"]
    assert -1 <= final["kendall_tau"] <= 1 and (trial / "result.json").exists()


def test_a_trial_stopped_after_epoch_k_resumes_to_the_same_scores(tmp_path):
    exp, context = _setup(tmp_path, epochs=3)
    straight = run_trial(_config(exp, seed=1), context, LocalSession())
    reference = pd.read_csv(Path(context.output) / "trials" / "spos-seed1" / "scores.csv")

    exp2, context2 = _setup(tmp_path / "again", epochs=3)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrialInterrupted):
        run_trial(_config(exp2, seed=1), context2, LocalSession(ckpt, stop_after_epoch=2))
    history = pd.read_csv(Path(context2.output) / "trials" / "spos-seed1" / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    session = LocalSession(ckpt)
    resumed = run_trial(_config(exp2, seed=1), context2, session)
    assert [r["epoch"] for r in session.results] == [3, 3]  # no finished epoch repeated
    rescored = pd.read_csv(Path(context2.output) / "trials" / "spos-seed1" / "scores.csv")
    pd.testing.assert_frame_equal(reference, rescored)  # bit for bit
    assert resumed["derived_arch"] == straight["derived_arch"]
    history = pd.read_csv(Path(context2.output) / "trials" / "spos-seed1" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]


def test_a_nan_loss_fails_the_trial_with_its_reason(tmp_path):
    exp, context = _setup(tmp_path, epochs=2)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        run_trial(_config(exp, overrides={"lr": float("nan")}), context, LocalSession())
    error = (Path(context.output) / "trials" / "spos-seed0" / "error.txt").read_text()
    assert error.startswith("NonFiniteLossError: non-finite loss")


def test_score_cli_rescoring_matches_the_trial(tmp_path, capsys):
    from harness.score import main as score_main

    exp, context = _setup(tmp_path, epochs=1)
    run_trial(_config(exp), context, LocalSession())
    trial = Path(context.output) / "trials" / "spos-seed0"
    archs = tmp_path / "archs.txt"
    archs.write_text("\n".join(context.archs[:5]) + "\n")
    out = tmp_path / "rescored.csv"
    assert score_main(["--trial", str(trial), "--archs", str(archs), "--output", str(out)]) == 0
    rescored = pd.read_csv(out)
    original = pd.read_csv(trial / "scores.csv").head(5)
    assert list(rescored["arch"]) == list(original["arch"])
    assert rescored["score"].tolist() == original["score"].tolist()
    bad = tmp_path / "bad.txt"
    bad.write_text("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|\n")
    assert score_main(["--trial", str(trial), "--archs", str(bad), "--output", str(out)]) == 2
    assert "line 1" in capsys.readouterr().err
