"""The results of an evaluation: ``evaluation.csv``, ``evaluation.md`` and the ``## Evaluation``
section of the search run's ``report.md`` — rebuilt from the trial directories alone."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from harness.evaluation_trial import EVAL_DIR, eval_trial_name
from harness.files import trial_outcome
from harness.tables import markdown_table, mean_std, upsert_report_section
from harness.evaluation_plan import EvalPlan

SECTION = "## Evaluation"
EVAL_COLUMNS = ["arch", "seed", "dataset", "epochs", "test_top1", "test_top5", "params", "flops", "truth",
                "wall_s", "status", "source", "recipe", "C", "N", "train_images", "test_images", "train_loss",
                "test_loss", "error", "space", "layers"]


def collect_evaluation(plan: EvalPlan, errors: Mapping[tuple[str, int], str] | None = None) -> pd.DataFrame:
    """One row per arch x seed of the plan, from the trial directories (no Ray needed)."""
    rows = []
    for arch, seed in plan.expected():
        trial_dir = plan.output / EVAL_DIR / eval_trial_name(arch, seed)
        row: dict[str, Any] = {"arch": arch, "seed": seed, "dataset": plan.job.dataset,
                               "source": plan.context.sources.get(arch), "recipe": plan.recipe.name,
                               "C": plan.recipe.C, "N": plan.recipe.N,
                               "space": "nb201" if getattr(plan.recipe, "network", "nb201") == "nb201" else "darts",
                               "layers": plan.recipe.layers if getattr(plan.recipe, "network", "nb201") != "nb201"
                               else None,
                               "truth": (plan.context.truth or {}).get(arch)}
        row.update(trial_outcome(trial_dir, EVAL_COLUMNS, (errors or {}).get((arch, seed))))
        rows.append(row)
    frame = pd.DataFrame(rows)
    for col in EVAL_COLUMNS:
        if col not in frame:
            frame[col] = np.nan if col not in ("error", "status", "source", "space") else ""
    return frame[EVAL_COLUMNS]


def rank_correlation(frame: pd.DataFrame) -> tuple[float | None, str]:
    """Kendall tau of mean test top-1 per arch against the ground truth, or why there is none."""
    from benchmarks.ranking import kendall_tau

    ok = frame[(frame["status"] == "ok") & frame["truth"].notna() & frame["test_top1"].notna()]
    per_arch = ok.groupby("arch").agg(test_top1=("test_top1", "mean"), truth=("truth", "first"))
    if len(per_arch) < 2:
        return None, "needs at least 2 finished archs with ground truth"
    try:
        return kendall_tau(per_arch["test_top1"], per_arch["truth"]), f"over {len(per_arch)} archs"
    except ValueError as err:
        return None, str(err)


def evaluation_markdown(plan: EvalPlan, frame: pd.DataFrame) -> str:
    """The ``## Evaluation`` section: setup, one row per arch (mean ± std over seeds), per trial."""
    r, job = plan.recipe, plan.job
    subset = ", ".join(f"{k} {v}" for k, v in (("train images", job.train_images), ("test images", job.test_images)) if v)
    lines = [SECTION, "",
             f"- from-scratch training, recipe `{r.name}`: {r.epochs} epochs, C={r.C}, "
             f"{f'{r.layers} DARTS cells' if r.network != 'nb201' else f'N={r.N}'}, batch {r.batch_size}, "
             f"lr {r.lr:g}, weight decay {r.weight_decay:g}{', label smoothing %g' % r.label_smoothing if r.label_smoothing else ''}",
             f"- dataset: {job.dataset}{' (' + subset + ')' if subset else ' (full splits)'}; seeds: {plan.seeds}",
             f"- ground truth: {plan.context.benchmark or 'none'} ({plan.context.metric or '-'})",
             f"- files: `evaluation.csv`, `{EVAL_DIR}/<trial>/history.csv`"]
    if plan.command:
        lines.append(f"- command: `{plan.command}`")
    tau, note = rank_correlation(frame)
    if plan.context.truth is not None:
        lines.append(f"- Kendall tau (test top-1 vs ground truth): "
                     f"{f'{tau:.3f} ' if tau is not None else 'n/a '}({note})")
    lines.append("")
    per_arch = []
    for arch, group in frame.groupby("arch", sort=False):
        ok = group[group["status"] == "ok"]
        per_arch.append({"arch": arch, "source": group["source"].iloc[0] or "", "trials": f"{len(ok)}/{len(group)} ok",
                         "test_top1": mean_std(ok["test_top1"], 2), "test_top5": mean_std(ok["test_top5"], 2),
                         "truth": group["truth"].iloc[0], "params": group["params"].iloc[0],
                         "MFLOPs": group["flops"].iloc[0] / 1e6 if pd.notna(group["flops"].iloc[0]) else math.nan,
                         "wall_s": float(pd.to_numeric(ok["wall_s"], errors="coerce").sum()) if len(ok) else math.nan})
    lines += ["### Per architecture (mean ± std over seeds)", "", markdown_table(pd.DataFrame(per_arch)), ""]
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        lines += ["### Trials that did not finish", "",
                  markdown_table(failed[["arch", "seed", "status", "error"]].fillna("")), ""]
    return "\n".join(lines) + "\n"




def refresh_run_report(run_dir: str | Path) -> bool:
    """Re-add ``RUN_DIR/evaluation.md`` to ``RUN_DIR/report.md`` (after ``harness.report`` rewrote it).

    Returns whether there was an evaluation to add.
    """
    run_dir = Path(run_dir)
    section = run_dir / "evaluation.md"
    if not section.exists():
        return False
    upsert_report_section(run_dir / "report.md", section.read_text())
    return True


def write_outputs(plan: EvalPlan, errors: Mapping[tuple[str, int], str] | None = None) -> pd.DataFrame:
    """``evaluation.csv`` + ``evaluation.md`` in the output, and the report section of the search run."""
    frame = collect_evaluation(plan, errors)
    frame.to_csv(plan.output / "evaluation.csv", index=False)
    section = evaluation_markdown(plan, frame)
    (plan.output / "evaluation.md").write_text(section)
    if plan.from_run is not None:
        upsert_report_section(plan.from_run / "report.md", section)
    return frame


def format_table(frame: pd.DataFrame) -> str:
    view = frame[["arch", "seed", "status", "test_top1", "test_top5", "truth", "params", "wall_s", "error"]].copy()
    view["error"] = view["error"].fillna("").astype(str).str.slice(0, 60)
    view["arch"] = [f"{a[:57]}..." if isinstance(a, str) and a.startswith("Genotype(") and len(a) > 60 else a
                    for a in view["arch"]]   # a DARTS genotype in full is in evaluation.csv
    return view.to_string(index=False, float_format=lambda v: f"{v:.2f}")


