"""The plan of a from-scratch evaluation: which archs, seeds, data and recipe — checked and
resolved before any trial starts, and saved (``evaluate.json``) so ``--resume`` replays it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from harness import truth as gt_io
from harness.config import UsageError
from harness.evaluation_trial import DATASETS, EvalContext, EvalJob, check_recipe_fits
from harness.files import provenance, read_json

PLAN_FILE = "evaluate.json"        # what --resume reads back
SPACES = ("nb201", "darts")


@dataclass
class EvalPlan:
    """Everything a run needs; saved as ``<output>/evaluate.json`` so ``--resume`` can rebuild it."""

    archs: list[str]
    seeds: list[int]
    job: EvalJob
    recipe: Any                       # benchmarks.train.Recipe
    output: Path
    context: EvalContext
    from_run: Path | None = None
    command: str = ""

    def expected(self) -> list[tuple[str, int]]:
        return [(a, s) for a in self.archs for s in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "archs": self.archs, "seeds": self.seeds, "job": self.job.to_dict(),
                "recipe": self.recipe.to_dict(), "output": str(self.output),
                "from_run": str(self.from_run) if self.from_run else None,
                "context": {"truth": self.context.truth, "metric": self.context.metric,
                            "benchmark": self.context.benchmark, "sources": self.context.sources,
                            "provenance": self.context.provenance}}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], output: Path) -> "EvalPlan":
        from benchmarks.train import Recipe

        ctx = record["context"]
        context = EvalContext(output=str(output), truth=ctx.get("truth"), metric=ctx.get("metric"),
                              benchmark=ctx.get("benchmark"), sources=ctx.get("sources") or {},
                              provenance=ctx.get("provenance") or {})
        return cls(list(record["archs"]), [int(s) for s in record["seeds"]], EvalJob.from_dict(record["job"]),
                   Recipe.from_dict(record["recipe"]), output, context,
                   Path(record["from_run"]) if record.get("from_run") else None, record.get("command", ""))




def run_space(run_dir: str | Path) -> str:
    """The search space of a harness.compare run (``run.json`` experiment.space; NB201 before it had one)."""
    run = read_json(Path(run_dir) / "run.json") or {}
    return str((run.get("experiment") or {}).get("space") or "nb201")


def canonical_genotype(text: str) -> str:
    """The DARTS genotype's printed form (``UsageError`` with the parser's one line when malformed)."""
    from spaces.darts import Genotype

    try:
        return str(Genotype.from_str(text.strip()))
    except ValueError as err:
        first = (str(err).strip().splitlines() or ["malformed"])[0]
        raise UsageError(f"{text.strip()[:80]!r} is not a DARTS genotype: {first}") from None


def archs_from_run(run_dir: str | Path, top_k: int = 0) -> dict[str, str]:
    """The archs a search run picked: every trial's derived arch, plus with ``top_k > 0`` the
    ``top_k`` best-scored archs of each trial's ``scores.csv``. Deduplicated, in trial order;
    maps arch -> where it came from (e.g. ``spos-seed0 derived; nap-seed0 top-2``).

    A DARTS-space run (``run.json`` experiment.space == "darts") gives each trial's
    ``derived.json`` "genotype" text instead (``top_k`` does not apply there)."""
    from spaces.nb201 import Arch

    run_dir = Path(run_dir)
    if run_space(run_dir) == "darts":
        return _genotypes_from_run(run_dir, top_k)
    trials = sorted(p for p in (run_dir / "trials").glob("*") if p.is_dir()) if (run_dir / "trials").is_dir() else []
    if not trials:
        raise UsageError(f"{run_dir} has no trials/ folder with trial directories; pass the --output directory "
                         "of a harness.compare run")
    sources: dict[str, list[str]] = {}

    def add(arch: str, where: str) -> None:
        try:
            arch = Arch.from_str(arch).to_str()
        except ValueError as err:
            raise UsageError(f"{where}: {err}") from None
        sources.setdefault(arch, []).append(where)

    for trial in trials:
        derived = read_json(trial / "derived.json")
        if derived and derived.get("arch"):
            add(derived["arch"], f"{trial.name} derived")
        if top_k > 0 and (trial / "scores.csv").exists():
            scores = pd.read_csv(trial / "scores.csv")
            if {"arch", "score"} <= set(scores.columns):
                ranked = scores.dropna(subset=["score"]).sort_values("score", ascending=False, kind="stable")
                for rank, arch in enumerate(ranked["arch"].head(top_k), start=1):
                    add(arch, f"{trial.name} top-{rank}")
    if not sources:
        raise UsageError(f"no finished trial in {run_dir} (no trials/*/derived.json); finish the search first "
                         "(harness.compare --output RUN_DIR --resume)")
    return {arch: "; ".join(where) for arch, where in sources.items()}


def _trial_dirs(run_dir: Path) -> list[Path]:
    trials = sorted(p for p in (run_dir / "trials").glob("*") if p.is_dir()) if (run_dir / "trials").is_dir() else []
    if not trials:
        raise UsageError(f"{run_dir} has no trials/ folder with trial directories; pass the --output directory "
                         "of a harness.compare run")
    return trials


def _genotypes_from_run(run_dir: Path, top_k: int) -> dict[str, str]:
    if top_k > 0:
        raise UsageError("--top-k applies to NB201 runs (their scores.csv); a DARTS-space run gives each trial's "
                         "derived genotype only")
    sources: dict[str, list[str]] = {}
    for trial in _trial_dirs(run_dir):
        derived = read_json(trial / "derived.json")
        if derived and derived.get("genotype"):
            try:
                genotype = canonical_genotype(str(derived["genotype"]))
            except UsageError as err:
                raise UsageError(f"{trial.name}/derived.json: {err}") from None
            sources.setdefault(genotype, []).append(f"{trial.name} derived")
    if not sources:
        raise UsageError(f"no finished trial in {run_dir} (no trials/*/derived.json with a genotype); finish the "
                         "search first (harness.compare --output RUN_DIR --resume)")
    return {g: "; ".join(where) for g, where in sources.items()}


def build_plan(*, archs: Mapping[str, str], seeds: Sequence[int], dataset: str, recipe_name: str | None,
               recipe_overrides: Mapping[str, Any], output: Path, job_fields: Mapping[str, Any],
               benchmark: str | None = None, metric: str | None = None, from_run: Path | None = None,
               command: str = "", space: str = "nb201") -> EvalPlan:
    """Validate and resolve everything before any trial starts (bad input -> ``UsageError``).

    ``space`` nb201 (archs are NB201 cell strings) or darts (archs are genotype texts, trained
    with a darts-* recipe; no ground truth)."""
    from benchmarks.train import RecipeError, check_dataset, recipe

    if space not in SPACES:
        raise UsageError(f"unknown space {space!r}; spaces: {', '.join(SPACES)}")
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; datasets: {', '.join(DATASETS)}")
    if space == "darts":
        name = recipe_name or ("darts-imagenet" if dataset == "imagenet" else "darts-cifar")
    else:
        name = recipe_name or ("imagenet" if dataset == "imagenet" else "nb201")
    try:
        r = recipe(name, **recipe_overrides)
        check_dataset(r, dataset)
    except RecipeError as err:
        raise UsageError(str(err)) from None
    if (r.network != "nb201") != (space == "darts"):
        fit = "darts-cifar or darts-imagenet" if space == "darts" else "nb201 or imagenet"
        raise UsageError(f"recipe {r.name!r} builds {r.network} networks, not {space} ones; use --recipe {fit}")
    if space == "darts" and benchmark:
        raise UsageError("the DARTS space has no ground-truth table; drop --benchmark")
    if not archs:
        what = "--genotype TEXT / --genotypes FILE" if space == "darts" else "--arch ARCH (NB201 strings)"
        raise UsageError(f"no architecture to evaluate: give {what} or --from RUN_DIR")
    if dataset == "imagenet" and not job_fields.get("data_root"):
        raise UsageError("--dataset imagenet needs --data-root ROOT (an ImageFolder tree with train/ and val/)")
    try:
        job = EvalJob(dataset=dataset, **job_fields)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    arch_list = list(archs)
    truth, column = None, None
    if benchmark:
        gt = gt_io.load(benchmark)
        column = gt_io.metric_column(gt, benchmark, dataset, metric)
        truth = dict(zip(arch_list, gt_io.values_for(gt, benchmark, arch_list, column)))
    context = EvalContext(output=str(output), truth=truth, metric=column, benchmark=benchmark,
                          sources=dict(archs), provenance=provenance())
    return EvalPlan(arch_list, list(seeds), job, r, output, context, from_run, command)


def check_data(plan: EvalPlan) -> str:
    """Open the data once on the driver: a bad root or a recipe that does not fit fails here (exit 2)."""
    from benchmarks.train import RecipeError, check_imagenet_root
    from harness.data import DataError, load_dataset

    job, r = plan.job, plan.recipe
    try:
        if job.dataset == "imagenet":
            if job.data_root is None:
                raise UsageError("--dataset imagenet needs --data-root PATH (an ImageFolder tree with train/ and val/)")
            classes = check_imagenet_root(job.data_root)
            return f"imagenet: ImageFolder {job.data_root} ({len(classes)} classes)"
        data = load_dataset(job.dataset, job.data_root, cache_dir=job.cache_dir, download=job.download,
                            synthetic_train=job.synthetic_train, synthetic_test=job.synthetic_test)
        check_recipe_fits(r, data.train.images.shape[-1])
    except (DataError, RecipeError) as err:
        raise UsageError(str(err)) from None
    n_train = min(job.train_images or len(data.train), len(data.train))
    n_test = min(job.test_images or len(data.test), len(data.test))
    return f"{data.name}: training on {n_train} / testing on {n_test} images ({data.source})"


