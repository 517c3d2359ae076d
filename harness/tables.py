"""Markdown pieces shared by the search report and the evaluation section."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``frame`` (floats to 4 significant digits, NaN empty).

    Hand-written rather than ``DataFrame.to_markdown``, which needs the optional ``tabulate``
    package (absent on the GPU machine): a report must never fail for want of it.
    """
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(frame.columns) + " |"
    sep = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def mean_std(values: Any, digits: int = 3) -> str:
    """``mean ± std`` of the numeric values (one value alone; ``–`` when there is none)."""
    values = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def upsert_report_section(report: Path, section: str) -> None:
    """Put ``section`` (starting with its ``## `` heading) into ``report``: replace the existing one
    (up to the next ``## `` heading) or append it; create the report if missing. Idempotent."""
    body = section.rstrip("\n").splitlines()
    heading = body[0].strip()
    lines = report.read_text().splitlines() if report.exists() else [f"# NAS harness run: {report.parent.name}", ""]
    starts = [i for i, ln in enumerate(lines) if ln.strip() == heading]
    if starts:
        start = starts[0]
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = lines[end:]
        lines = lines[:start] + body + ([""] + tail if tail else [])
    else:
        while lines and not lines[-1].strip():
            lines.pop()
        lines = lines + [""] + body
    report.write_text("\n".join(lines) + "\n")
