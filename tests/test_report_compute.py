"""The report's tau-against-compute view, from trial files alone (no Ray)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.report import compute_curves, training_free_lines, write_report


def _trial(run: Path, method: str, seed: int, taus: list[float | None], tau: float, epochs: int) -> None:
    d = run / "trials" / f"{method}-seed{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"method": method, "seed": seed}))
    (d / "result.json").write_text(json.dumps({"kendall_tau": tau, "epochs": epochs, "wall_s": 1.0}))
    pd.DataFrame({"arch": [f"a{i}" for i in range(6)], "score": [0, 1, 2, 3, 5, 4], "truth": range(6),
                  "unique": True}).to_csv(d / "scores.csv", index=False)
    if taus:
        pd.DataFrame({"epoch": range(1, len(taus) + 1), "kendall_tau": taus, "train_images": 100,
                      "valid_images": 20, "cpu_s": 2.0, "epoch_s": 1.0, "wall_s": 1.0,
                      "rank_cpu_s": [0.5 if t is not None else None for t in taus]}).to_csv(d / "history.csv",
                                                                                            index=False)


def test_tau_against_compute_is_cumulative_and_draws_the_training_free_bars(tmp_path):
    run = tmp_path / "run"
    _trial(run, "spos", 0, [None, 0.1, None, 0.3], 0.3, 4)
    _trial(run, "spos", 1, [None, 0.2, None, 0.5], 0.5, 4)
    _trial(run, "params", 0, [], 0.57, 0)
    _trial(run, "synflow", 0, [], 0.6, 0)
    _trial(run, "random", 0, [], 0.9, 0)  # never a bar, whatever its tau
    summary = write_report(run)
    curves = compute_curves(summary)
    spos0 = curves[(curves["method"] == "spos") & (curves["seed"] == 0)]
    assert list(spos0["epoch"]) == [2, 4]
    assert list(spos0["images_seen"]) == [240.0, 480.0]  # train + valid, summed over epochs 1..k
    assert list(spos0["cpu_s"]) == [4.0, 8.0]
    assert training_free_lines(summary) == {"params": 0.57, "best training-free: synflow": 0.6}
    assert (run / "tau_vs_compute.png").exists()
    report = (run / "report.md").read_text()
    assert "## Ranking quality against compute" in report and "0.400 ± 0.141" in report
