"""Run directory -> summary table, Markdown report and PNG plots.

Everything is rebuilt from the files trials leave in ``<run>/trials/*/`` (no Ray needed):
``python -m harness.report RUN_DIR``.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness.evaluation_report import refresh_run_report
from harness.files import read_json, trial_outcome
from harness.tables import markdown_table, mean_std

SUMMARY_COLUMNS = [
    "method", "kind", "seed", "status", "error", "kendall_tau", "spearman", "p_at_top5", "tau_top10",
    "unique_kendall_tau", "n_archs", "n_unique", "derived_arch", "derived_truth", "derived_params",
    "derived_macs", "epochs", "search_macs", "images_seen", "search_cpu_s", "derive_macs", "wall_s", "trial_dir",
]
RANKING_COLUMNS = ("kendall_tau", "spearman", "p_at_top5", "tau_top10", "unique_kendall_tau", "n_archs", "n_unique",
                   "derived_truth")
BASELINES = ("params", "flops", "random")  # = methods.baselines.BASELINES (kept import-free: no torch here)
REFERENCE = "params"  # the baseline every method is held against


def collect(run_dir: Path, expected: Sequence[tuple[str, int]] = (), errors: dict[tuple[str, int], str] | None = None) -> pd.DataFrame:
    """One row per trial. ``expected`` (method, seed) pairs with no trial directory show as failed."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for trial_dir in sorted((run_dir / "trials").glob("*")):
        config = read_json(trial_dir / "config.json")
        if not config:
            continue
        key = (config["method"], int(config["seed"]))
        row: dict[str, Any] = {"method": key[0], "seed": key[1], "trial_dir": str(trial_dir)}
        row.update(trial_outcome(trial_dir, SUMMARY_COLUMNS))
        rows[key] = row
    for key, message in (errors or {}).items():
        row = rows.setdefault(key, {"method": key[0], "seed": key[1]})
        if row.get("status") == "ok":
            continue
        if row.get("status") != "failed":  # the trial's own error.txt, when there is one, is more precise
            row["error"] = message
        row["status"] = "failed"
    for key in expected:
        rows.setdefault(key, {"method": key[0], "seed": key[1], "status": "failed",
                              "error": "trial did not start (see Ray's log in the run directory)"})
    frame = pd.DataFrame(list(rows.values()))
    for col in SUMMARY_COLUMNS:
        if col not in frame:
            frame[col] = np.nan if col not in ("error", "derived_arch", "status", "trial_dir") else ""
    frame["kind"] = frame["method"].map(lambda m: "baseline" if m in BASELINES else "method")
    frame = frame[SUMMARY_COLUMNS]
    return frame.sort_values(["method", "seed"], key=_method_order_key).reset_index(drop=True)


def _method_order_key(col: pd.Series) -> pd.Series:
    if col.name != "method":
        return col
    return col.map(lambda m: (m in BASELINES, m))


def aggregate(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over successful seeds, per method (``search_min``: trial wall minutes;
    ``search_tmacs``: the search's multiply-adds in units of 10^12, the compute budgets equalise)."""
    ok = summary[summary["status"] == "ok"]
    cols = ["kendall_tau", "unique_kendall_tau", "spearman", "p_at_top5", "tau_top10", "derived_truth",
            "search_tmacs", "search_min"]
    ok = ok.assign(search_min=pd.to_numeric(ok["wall_s"], errors="coerce") / 60,
                   search_tmacs=pd.to_numeric(ok["search_macs"], errors="coerce") / 1e12)
    rows = []
    for method, group in summary.groupby("method", sort=False):
        g = ok[ok["method"] == method]
        row: dict[str, Any] = {"method": method, "kind": group["kind"].iloc[0] if "kind" in group else "",
                               "trials": f"{len(g)}/{len(group)} ok"}
        for col in cols:
            values = pd.to_numeric(g[col], errors="coerce").dropna()
            row[col] = mean_std(values)
        rows.append(row)
    return pd.DataFrame(rows)


def _scores_of(row: Any) -> pd.DataFrame | None:
    path = Path(str(row.trial_dir)) / "scores.csv"
    if not path.is_file():
        return None
    scores = pd.read_csv(path)
    return scores if "truth" in scores else None


def versus_reference(summary: pd.DataFrame, n_boot: int | None = None) -> pd.DataFrame:
    """Per method: each ranking metric (mean over seeds) with a bootstrap 95 % interval over
    archs, and its Kendall tau's difference from ``params`` with the paired bootstrap interval
    (the same arch resamples for the method's seeds and for params) — whether the method beats
    the bar, and by how much. ``n_boot`` defaults to 1,000 resamples (200 above 2,000 archs).
    """
    from benchmarks.ranking import kendall_tau, kendall_tau_top_k, paired_bootstrap, precision_at_top_k, spearman

    def top10(p: np.ndarray, t: np.ndarray) -> float:
        return kendall_tau_top_k(p, t, 0.10)

    def p5(p: np.ndarray, t: np.ndarray) -> float:
        return precision_at_top_k(p, t, 0.05)

    others = (("spearman", spearman), ("p_at_top5", p5), ("tau_top10", top10))

    ok = summary[(summary["status"] == "ok") & summary["kendall_tau"].notna()]
    reference = ok[ok["method"] == REFERENCE]
    ref_scores = _scores_of(next(reference.itertuples())) if len(reference) else None
    rows = []
    for method, group in ok.groupby("method", sort=False):
        tables = [t for t in (_scores_of(r) for r in group.itertuples()) if t is not None]
        if not tables:
            continue
        truth, preds = tables[0]["truth"].to_numpy(float), [t["score"].to_numpy(float) for t in tables]
        boots = n_boot or (1000 if len(truth) <= 2000 else 200)
        row: dict[str, Any] = {"method": method, "kind": group["kind"].iloc[0], "seeds": len(preds)}
        for name, metric in (("kendall_tau", kendall_tau), *others):
            try:
                value, low, high = paired_bootstrap(metric, preds, truth, n_boot=boots)
                row.update({name: value, f"{name}_ci": f"[{low:.3f}, {high:.3f}]"})
            except ValueError:
                row.update({name: math.nan, f"{name}_ci": "undefined"})
        if ref_scores is not None and method != REFERENCE and len(ref_scores) == len(truth):
            try:
                diff, low, high = paired_bootstrap(kendall_tau, preds, truth, baseline=ref_scores["score"].to_numpy(float),
                                                   n_boot=boots, seed=1)
                verdict = "yes" if low > 0 else ("no" if high < 0 else "not significant")
                row.update({f"minus_{REFERENCE}": diff, "diff_ci": f"[{low:+.3f}, {high:+.3f}]",
                            f"beats_{REFERENCE}": verdict})
            except ValueError as err:
                row.update({f"beats_{REFERENCE}": f"undefined: {err}"})
        rows.append(row)
    return pd.DataFrame(rows)


def headline_table(summary: pd.DataFrame, versus: pd.DataFrame | None = None) -> pd.DataFrame:
    """The one table a ranking study reports, a row per method: each ranking metric (mean over
    seeds) with tau's bootstrap 95 % interval over archs, the derived arch's ground truth, the
    search's compute and wall time, and tau's paired difference from ``params`` (interval and
    verdict). Empty without ground truth."""
    versus = versus_reference(summary) if versus is None else versus
    if versus.empty:
        return versus
    agg = aggregate(summary).set_index("method")
    rows = []
    for v in versus.itertuples():
        a = agg.loc[v.method]
        diff = getattr(v, f"minus_{REFERENCE}", math.nan)
        rows.append({"method": v.method, "trials": a["trials"],
                     "kendall_tau [95% CI]": f"{v.kendall_tau:.3f} {v.kendall_tau_ci}",
                     "spearman": f"{v.spearman:.3f}", "p_at_top5": f"{v.p_at_top5:.3f}",
                     "tau_top10": f"{v.tau_top10:.3f}", "derived_truth": a["derived_truth"],
                     "search_tmacs": a["search_tmacs"], "search_min": a["search_min"],
                     f"tau minus {REFERENCE} [95% CI]": ("" if v.method == REFERENCE or pd.isna(diff)
                                                        else f"{diff:+.3f} {v.diff_ci}"),
                     f"beats {REFERENCE}": "" if v.method == REFERENCE else getattr(v, f"beats_{REFERENCE}", "")})
    return pd.DataFrame(rows)


def plot(run_dir: Path, summary: pd.DataFrame) -> list[str]:
    """Write the report's PNGs; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ok = summary[(summary["status"] == "ok") & summary["kendall_tau"].notna()]
    if not ok.empty:
        methods = list(dict.fromkeys(ok["method"]))
        fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 3.5))
        for i, m in enumerate(methods):
            taus = ok.loc[ok["method"] == m, "kendall_tau"].astype(float)
            ax.scatter(np.full(len(taus), i), taus, alpha=0.8)
            ax.hlines(taus.mean(), i - 0.25, i + 0.25, color="k")
        ax.set_xticks(range(len(methods)), methods)
        ax.axhline(0, color="grey", lw=0.5)
        ref = ok.loc[ok["method"] == REFERENCE, "kendall_tau"].astype(float)
        if len(ref):
            ax.axhline(ref.mean(), color="tab:red", ls="--", lw=1, label=f"{REFERENCE} (training-free bar)")
            ax.legend(fontsize=7, loc="best")
        ax.set_ylabel("Kendall tau vs ground truth")
        ax.set_title("Ranking quality per method (one dot per seed)")
        fig.tight_layout()
        fig.savefig(run_dir / "tau_per_method.png", dpi=110)
        plt.close(fig)
        written.append("tau_per_method.png")

        first = ok.groupby("method", sort=False).first().reset_index()
        fig, axes = plt.subplots(1, len(first), figsize=(3.2 * len(first), 3.2), squeeze=False)
        for ax, row in zip(axes[0], first.itertuples()):
            scores = pd.read_csv(Path(row.trial_dir) / "scores.csv")
            ax.scatter(scores["truth"], scores["score"], s=6, alpha=0.6)
            ax.set_title(f"{row.method} (seed {row.seed}), tau {row.kendall_tau:.2f}", fontsize=9)
            ax.set_xlabel("ground truth")
        axes[0][0].set_ylabel("method score")
        fig.tight_layout()
        fig.savefig(run_dir / "score_vs_truth.png", dpi=110)
        plt.close(fig)
        written.append("score_vs_truth.png")

    curves = []
    for row in summary.itertuples():
        path = Path(str(row.trial_dir)) / "history.csv" if isinstance(row.trial_dir, str) and row.trial_dir else None
        if path and path.exists():
            h = pd.read_csv(path)
            if "kendall_tau" in h and h["kendall_tau"].notna().any():
                curves.append((f"{row.method} s{row.seed}", h.dropna(subset=["kendall_tau"])))
    compute = compute_curves(summary)
    if not compute.empty:
        written.append(plot_tau_vs_compute(run_dir, compute, training_free_lines(summary)))
    if curves:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for label, h in curves:
            ax.plot(h["epoch"], h["kendall_tau"], marker="o", ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("Kendall tau")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run_dir / "tau_vs_epoch.png", dpi=110)
        plt.close(fig)
        written.append("tau_vs_epoch.png")
    return written


def compute_curves(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, seed, ranked epoch): tau and the compute spent up to that epoch —
    the multiply-adds the search processed (``search_macs``), images drawn from the two search
    halves and the trial's CPU seconds, all cumulative and without the ranking evaluations
    themselves (their cost is in ``rank_cpu_s`` and ``rank_macs``)."""
    rows = []
    for row in summary[summary["status"] == "ok"].itertuples():
        path = Path(str(row.trial_dir)) / "history.csv" if isinstance(row.trial_dir, str) and row.trial_dir else None
        if not path or not path.exists():
            continue
        h = pd.read_csv(path)
        if "kendall_tau" not in h or "train_images" not in h or h["kendall_tau"].notna().sum() < 1:
            continue
        images = (h["train_images"].fillna(0) + h.get("valid_images", 0 * h["train_images"]).fillna(0)).cumsum()
        cpu = h["cpu_s"].fillna(0).cumsum() if "cpu_s" in h else h["epoch_s"].cumsum()
        macs = h["search_macs"].cumsum() if "search_macs" in h else pd.Series(np.nan, index=h.index)
        for i in h.index[h["kendall_tau"].notna()]:
            rows.append({"method": row.method, "seed": row.seed, "epoch": int(h.loc[i, "epoch"]),
                         "search_macs": float(macs[i]), "images_seen": float(images[i]), "cpu_s": float(cpu[i]),
                         "kendall_tau": float(h.loc[i, "kendall_tau"]),
                         "rank_cpu_s": float(h.loc[i, "rank_cpu_s"]) if "rank_cpu_s" in h else np.nan,
                         "rank_macs": float(h.loc[i, "rank_macs"]) if "rank_macs" in h else np.nan})
    return pd.DataFrame(rows)


def training_free_lines(summary: pd.DataFrame) -> dict[str, float]:
    """``params``' mean tau and the best other training-free row's (a proxy or flops): the bars a
    trained method must clear."""
    ok = summary[(summary["status"] == "ok") & summary["kendall_tau"].notna()]
    free = ok[pd.to_numeric(ok["epochs"], errors="coerce").fillna(0) == 0]
    means = free.groupby("method")["kendall_tau"].mean()
    lines = {}
    if REFERENCE in means:
        lines[REFERENCE] = float(means[REFERENCE])
    others = means.drop(index=[m for m in (REFERENCE, "random") if m in means])
    if len(others):
        lines[f"best training-free: {others.idxmax()}"] = float(others.max())
    return lines


def plot_tau_vs_compute(run_dir: Path, compute: pd.DataFrame, lines: dict[str, float]) -> str:
    """tau against the search's multiply-adds, images seen and CPU seconds: per method the mean
    over seeds, the band from the lowest to the highest seed, the training-free bars as
    horizontal lines."""
    import matplotlib.pyplot as plt

    panels = [("search_macs", "multiply-adds of search, 10^12 (ranking excluded)", 1e12),
              ("images_seen", "images seen (train + valid halves), 1,000s", 1e3),
              ("cpu_s", "CPU seconds of search (ranking excluded)", 1.0)]
    panels = [p for p in panels if compute[p[0]].notna().any()]
    fig, axes_array = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), sharey=True, squeeze=False)
    axes = list(axes_array[0])
    for ax, (x, label, unit) in zip(axes, panels):
        for method, g in compute.groupby("method", sort=False):
            by_epoch = g.groupby("epoch")
            xs, mean = by_epoch[x].mean() / unit, by_epoch["kendall_tau"].mean()
            line, = ax.plot(xs, mean, marker="o", ms=3, label=f"{method} ({g['seed'].nunique()} seeds)")
            if g["seed"].nunique() > 1:
                ax.fill_between(xs, by_epoch["kendall_tau"].min(), by_epoch["kendall_tau"].max(),
                                color=line.get_color(), alpha=0.15)
        for (name, value), style in zip(lines.items(), ("--", ":")):
            ax.axhline(value, color="tab:red" if name == REFERENCE else "tab:purple", ls=style, lw=1,
                       label=f"{name} {value:.3f}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel(label)
    axes[0].set_ylabel("Kendall tau vs ground truth")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle("Ranking quality against compute (line: mean over seeds; band: lowest to highest seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(run_dir / "tau_vs_compute.png", dpi=110)
    plt.close(fig)
    return "tau_vs_compute.png"


def log_compute_fit(compute: pd.DataFrame, bar: float | None) -> pd.DataFrame:
    """Per method, the least-squares line tau = a + b * log10(search multiply-adds) through every
    (seed, ranked epoch) point, and — where the slope is positive — the compute at which that line
    reaches ``bar`` (``params``' tau). An extrapolation with a stated fit, not a prediction: the
    report prints the slope's standard error, R² and how far beyond the measured range it reaches."""
    rows = []
    for method, g in compute.dropna(subset=["search_macs", "kendall_tau"]).groupby("method", sort=False):
        x, y = np.log10(g["search_macs"].to_numpy(float)), g["kendall_tau"].to_numpy(float)
        row: dict[str, Any] = {"method": method, "points": len(x)}
        if len(x) < 3 or np.ptp(x) == 0:
            rows.append({**row, "fit": "too few distinct compute points"})
            continue
        b, a = np.polyfit(x, y, 1)
        resid = y - (a + b * x)
        se = math.sqrt(float(resid @ resid) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
        ss = float(((y - y.mean()) ** 2).sum())
        row.update({"slope_per_decade": f"{b:+.3f} ± {se:.3f}", "r2": f"{1 - float(resid @ resid) / ss:.2f}" if ss else "-",
                    "tau_at_max": f"{a + b * x.max():.3f}", "max_tmacs": f"{10 ** x.max() / 1e12:.2f}"})
        if bar is not None and b > 0:
            needed = 10 ** ((bar - a) / b)
            row.update({f"tmacs_to_reach_{REFERENCE}": f"{needed / 1e12:.3g}",
                        "times_measured": f"{needed / 10 ** x.max():.3g}x"})
        elif bar is not None:
            row.update({f"tmacs_to_reach_{REFERENCE}": "never (slope <= 0)"})
        rows.append(row)
    return pd.DataFrame(rows)


def compute_table(compute: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (method, epoch), g in compute.groupby(["method", "epoch"], sort=False):
        rows.append({"method": method, "epoch": epoch, "seeds": g["seed"].nunique(),
                     "search_tmacs": f"{g['search_macs'].mean() / 1e12:.2f}",
                     "images_seen": f"{g['images_seen'].mean():,.0f}", "cpu_s": f"{g['cpu_s'].mean():.0f}",
                     "kendall_tau": mean_std(g["kendall_tau"]), "ranking_cpu_s": f"{g['rank_cpu_s'].mean():.0f}",
                     "ranking_tmacs": f"{g['rank_macs'].mean() / 1e12:.2f}"})
    return pd.DataFrame(rows)


def write_report(run_dir: str | Path, expected: Sequence[tuple[str, int]] = (),
                 errors: dict[tuple[str, int], str] | None = None) -> pd.DataFrame:
    """Write ``summary.csv``, ``report.md`` and the plots; return the summary."""
    run_dir = Path(run_dir).resolve()
    summary = collect(run_dir, expected, errors)
    summary.to_csv(run_dir / "summary.csv", index=False)
    run = read_json(run_dir / "run.json") or {}
    has_truth = summary["kendall_tau"].notna().any()
    plots = plot(run_dir, summary)
    lines = [f"# NAS harness run: {run_dir.name}", ""]
    if run:
        exp = run.get("experiment", {})
        lines += [f"- command: `{run.get('command', '')}`",
                  f"- space: {exp.get('space', 'nb201')}, budget: {exp.get('budget')}, dataset: {exp.get('dataset')}, "
                  f"C={exp.get('C')}" + ("" if exp.get("space") == "darts" else f", N={exp.get('N')}"),
                  f"- evaluation archs: {run.get('arch_set', '')}",
                  f"- ground truth: {run.get('benchmark') or 'none'} ({run.get('metric') or '-'})",
                  f"- code: {run.get('provenance', {}).get('git_sha')}", ""]
    if exp_space(run) == "darts":
        lines += darts_section(summary)
    elif not has_truth:
        lines += ["No ranking metrics: this run had no ground truth (`--benchmark none`, or a space without a "
                  "built-in table); rerun with the default `--benchmark builtin` or `--benchmark FILE`.", ""]
    if exp_space(run) != "darts":  # (the DARTS section above has the per-method table of that space)
        lines += ["## Per method (mean ± std over successful seeds)", "",
                  "`kind`: `baseline` rows (params, flops, random) are training-free reference points that every "
                  "run with ground truth scores on the same archs.", "", markdown_table(aggregate(summary)), ""]
    if has_truth:
        versus = versus_reference(summary)
        if not versus.empty:
            lines += ["## Headline", "",
                      f"Per method: tau (mean over seeds) with its bootstrap 95 % interval over archs, the other ranking "
                      f"metrics, the derived arch's ground truth, the search's multiply-adds (10^12) and wall minutes, "
                      f"and tau's paired difference from `{REFERENCE}` (`yes`: the interval lies above 0).", "",
                      markdown_table(headline_table(summary, versus)), ""]
            lines += [f"## Against the `{REFERENCE}` baseline", "",
                      f"Each ranking metric (mean over seeds) with its bootstrap 95 % interval over archs; "
                      f"`minus_{REFERENCE}`: "
                      f"the difference from {REFERENCE}'s tau on the same archs, with the paired bootstrap 95 % "
                      f"interval; `beats_{REFERENCE}` is `yes` when that interval lies above 0.", "",
                      markdown_table(versus), ""]
    compute = compute_curves(summary)
    if not compute.empty and compute["epoch"].nunique() > 1:
        lines += ["## Ranking quality against compute", "",
                  "tau at each ranked epoch (`--eval-every`) against the compute spent so far: the search's "
                  "multiply-adds in 10^12 (`search_tmacs`: every conv/linear forward, x3 where a backward follows), "
                  "images drawn from the search halves and the trial's CPU seconds, all without the ranking "
                  "evaluations, whose own cost per evaluation is `ranking_cpu_s` / `ranking_tmacs` (BN "
                  "recalibration and validation of every evaluation arch).",
                  "", markdown_table(compute_table(compute)), ""]
        bar = training_free_lines(summary).get(REFERENCE)
        fit = log_compute_fit(compute, bar)
        if not fit.empty:
            lines += ["Where each curve heads: the least-squares line tau = a + b log10(multiply-adds) through every "
                      "seed's ranked epochs (`slope_per_decade` ± its standard error), and where that line would reach "
                      f"`{REFERENCE}`" + (f" ({bar:.3f})" if bar is not None else "") + " — an extrapolation by the "
                      "stated factor beyond the measured compute, to be read with the fit's R².", "",
                      markdown_table(fit), ""]
    per_trial = summary.drop(columns=["trial_dir"])
    if exp_space(run) == "darts":  # nothing ranked in this space
        per_trial = per_trial.drop(columns=[c for c in RANKING_COLUMNS if c in per_trial])
    lines += ["## Per trial", "",
              markdown_table(per_trial.assign(
                  derived_arch=summary["derived_arch"].fillna(""), error=summary["error"].fillna(""))), ""]
    lines += [f"![{p}]({p})" for p in plots]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    refresh_run_report(run_dir)  # keeps the from-scratch evaluation section, if the run has one
    return summary


def exp_space(run: dict[str, Any]) -> str:
    return str(run.get("experiment", {}).get("space", "nb201"))


def darts_section(summary: pd.DataFrame) -> list[str]:
    """The DARTS-space report: no ground truth, so each method's genotype, its size at the
    evaluation settings and the search cost; accuracy comes from a from-scratch evaluation."""
    ok = summary[summary["status"] == "ok"]
    lines = ["## DARTS space: the genotype each method derived", "",
             "No tabular ground truth in this space: each trial reports the genotype it derived, its parameters "
             "and multiply-adds in the CIFAR evaluation network (C=36, 20 cells, 32 px, auxiliary head excluded; "
             "the ImageNet mobile sizes are in each `derived.json`) and the search cost. Accuracy needs training "
             "from scratch: `--retrain-top 0` or `python -m harness.evaluate --space darts --from RUN "
             "--recipe darts-cifar`.", ""]
    rows = []
    for method, g in ok.groupby("method", sort=False):
        params = pd.to_numeric(g["derived_params"], errors="coerce").dropna() / 1e6
        macs = pd.to_numeric(g["derived_macs"], errors="coerce").dropna() / 1e6
        wall = pd.to_numeric(g["wall_s"], errors="coerce").dropna() / 60
        rows.append({"method": method, "trials": len(g), "params_M": mean_std(params), "macs_M": mean_std(macs),
                     "search_min": mean_std(wall)})
    if rows:
        lines += [markdown_table(pd.DataFrame(rows)), ""]
    for row in ok.itertuples():
        lines += [f"- `{row.method}` seed {row.seed}: `{row.derived_arch}`"]
    return lines + [""]


def format_table(summary: pd.DataFrame, space: str = "nb201") -> str:
    cols = (["method", "seed", "status", "derived_params", "derived_macs", "wall_s", "error"] if space == "darts"
            else ["method", "seed", "status", "kendall_tau", "p_at_top5", "derived_truth", "wall_s", "error"])
    view = summary[cols].copy()
    view["error"] = view["error"].fillna("").astype(str).str.slice(0, 60)
    return view.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.report", description="Rebuild a run's report.")
    parser.add_argument("run_dir", help="the --output directory of a harness.compare run")
    parser.add_argument("--table", action="store_true",
                        help="only print the per-method Markdown table (with ground truth: tau with its bootstrap "
                             "interval, the other ranking metrics, compute, and the paired difference from params; "
                             "without: mean ± std over seeds); write nothing")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / "trials").is_dir():
        print(f"error: {run_dir} has no trials/ folder; pass the --output directory of a harness.compare run",
              file=sys.stderr)
        return 2
    if args.table:
        summary = collect(run_dir.resolve())
        table = headline_table(summary) if summary["kendall_tau"].notna().any() else pd.DataFrame()
        print(markdown_table(table if not table.empty else aggregate(summary)))
        return 0
    summary = write_report(run_dir)
    print(format_table(summary))
    print(f"\nwrote {run_dir / 'summary.csv'} and {run_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
