"""The report's tau-against-compute view, from trial files alone (no Ray)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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


def test_the_log_compute_fit_recovers_a_known_line_and_says_where_it_reaches_the_bar():
    from harness.report import log_compute_fit

    macs = [1e12, 2e12, 4e12, 8e12]
    line = pd.DataFrame({"method": "m", "seed": 0, "epoch": range(1, 5), "search_macs": macs,
                         "kendall_tau": [0.1 + 0.2 * np.log10(x / 1e12) for x in macs]})
    falling = line.assign(method="f", kendall_tau=-line["kendall_tau"])
    fit = log_compute_fit(pd.concat([line, falling]), bar=0.5).set_index("method")
    assert fit.loc["m", "slope_per_decade"] == "+0.200 ± 0.000" and fit.loc["m", "r2"] == "1.00"
    assert float(fit.loc["m", "tmacs_to_reach_params"]) == pytest.approx(100.0)  # 0.1 + 0.2 * 2 = 0.5
    assert fit.loc["m", "times_measured"] == "12.5x"
    assert fit.loc["f", "tmacs_to_reach_params"] == "never (slope <= 0)"
    few = log_compute_fit(line.iloc[:2], bar=0.5)
    assert few.loc[0, "fit"] == "too few distinct compute points"


def test_the_curves_carry_the_cumulative_multiply_adds(tmp_path):
    run = tmp_path / "run"
    _trial(run, "nap", 0, [0.1, 0.2, 0.3], 0.3, 3)
    history = run / "trials" / "nap-seed0" / "history.csv"
    pd.read_csv(history).assign(search_macs=[1e12, 2e12, 3e12], rank_macs=5e11).to_csv(history, index=False)
    (run / "trials" / "nap-seed0" / "result.json").write_text(json.dumps(
        {"kendall_tau": 0.3, "epochs": 3, "wall_s": 1.0, "search_macs": 6e12}))
    summary = write_report(run)
    curves = compute_curves(summary)
    assert list(curves["search_macs"]) == [1e12, 3e12, 6e12]
    report = (run / "report.md").read_text()
    assert "| nap | 3 | 1 | 6.00 |" in report and "Where each curve heads" in report


def test_the_headline_table_puts_every_row_against_params(tmp_path, capsys):
    from harness.report import headline_table, main

    run = tmp_path / "run"
    _trial(run, "spos", 0, [0.1], 0.1, 1)
    _trial(run, "params", 0, [], 0.57, 0)
    summary = write_report(run)
    table = headline_table(summary).set_index("method")
    assert list(table.index) == ["spos", "params"]
    # spos' scores.csv equals params' here: tau identical, the paired difference exactly 0
    assert table.loc["spos", "tau minus params [95% CI]"].startswith("+0.000 [+0.000, +0.000]")
    assert table.loc["spos", "beats params"] == "not significant" and table.loc["params", "beats params"] == ""
    assert "## Headline" in (run / "report.md").read_text()
    assert main([str(run), "--table"]) == 0
    assert "kendall_tau [95% CI]" in capsys.readouterr().out
