"""``python -m harness.compare``: methods x seeds as Ray Tune trials, then a ranking report.

    python -m harness.compare --methods hopnas,nap
    python -m harness.compare --methods spos,synflow --seeds 0-9 --budget cpu \\
        --dataset cifar10 --data-root PATH --output runs/x
    python -m harness.compare --output runs/x --resume

The path of one trial: this CLI builds the plan (every method config resolved here, once) ->
``harness.runner`` runs it on Ray -> ``harness.trial`` (the search trial, epochs in
``harness.loop``) -> the method (``methods/``) -> the supernet (``spaces/``) -> ``harness.report``.

Bad input exits 2 with one line saying what to do; a finished run exits 0 when every trial
succeeded and 1 otherwise (failed trials are listed with their reason).
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness import truth as gt_io
from harness.config import SPACES, ExperimentConfig, UsageError, parse_eval_archs, parse_seeds
from harness.files import provenance, read_json, resolve_path
from harness.report import format_table, write_report
from harness.runner import Resources, TrialSpec, check_local_resources, run_trials
from harness.trial import RunContext, ray_trainable, trial_config, trial_name


# --------------------------------------------------------------------------- arguments


def parse_overrides(items: Sequence[str], methods: Sequence[str], space: str = "nb201") -> dict[str, dict[str, Any]]:
    """``--set spos.lr=0.1`` -> {"spos": {"lr": 0.1}}, typed like the config field."""
    from common.config import coerce_field
    from methods.registry import get_method

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, field_name = key.partition(".")
        if not sep or not dot:
            raise UsageError(f"--set expects METHOD.FIELD=VALUE (e.g. spos.lr=0.05), got {item!r}")
        if method not in methods:
            raise UsageError(f"--set {item!r} names method {method!r}, which is not in --methods {','.join(methods)}")
        try:
            out.setdefault(method, {})[field_name] = coerce_field(get_method(method, space).Config, field_name, value)
        except ValueError as err:
            raise UsageError(f"--set {item!r}: {err}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", default="hopnas,nap", help="comma list of methods (see --list-methods)")
    p.add_argument("--seeds", default="0", help="e.g. 0,1,2 or 0-9")
    p.add_argument("--space", default="nb201",
                   help="search space: nb201 (NAS-Bench-201, ranked against its ground truth) or darts (the DARTS "
                        "space: each method derives a genotype; no ground truth)")
    p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | synthetic")
    p.add_argument("--data-root", default=None,
                   help="torchvision CIFAR folder, or an ImageFolder dir / .tar.gz with train/ and test/")
    p.add_argument("--no-download", action="store_true", help="never download CIFAR (offline machines)")
    p.add_argument("--cache-dir", default=None, help="where decoded datasets are cached (default ~/.cache/nas-harness)")
    p.add_argument("--benchmark", default="builtin",
                   help="ground truth: 'builtin' (the NAS-Bench-201 table shipped with the package: CIFAR-10, "
                        "CIFAR-100 and ImageNet16-120 test accuracy of all 15,625 cells), 'none' (no ranking), "
                        "or a CSV/Parquet table (plain data), a NAS-Bench-201 .pth file or a NATS-Bench dir (both "
                        "are pickles, unpickled as code: trusted files only; convert them once with "
                        "`python -m benchmarks.ground_truth convert`)")
    p.add_argument("--metric", default=None, help="ground-truth column (default: the dataset's test accuracy)")
    p.add_argument("--budget", default="cpu", help="smoke | cpu | paper")
    p.add_argument("--epochs", type=int, default=None, help="override every method's search epochs")
    p.add_argument("--eval-archs", default=None, help="N (seeded sample), unique (6,466) or all (15,625)")
    p.add_argument("--arch-seed", type=int, default=0, help="seed of the evaluation-arch sample")
    p.add_argument("--eval-every", type=int, default=0, help="rank every k epochs (0: at the end only)")
    p.add_argument("--C", type=int, default=None, help="supernet width (budget default)")
    p.add_argument("--N", type=int, default=None, help="cells per stage (budget default)")
    p.add_argument("--train-per-class", type=int, default=None, help="images per class in each search half")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                   help="override a method config field, e.g. --set spos.score_by=loss (repeatable)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed, e.g. 0.5")
    p.add_argument("--num-gpus", type=int, default=None,
                   help="logical GPUs of a local Ray instance (default: what Ray detects)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (inside each trial)")
    p.add_argument("--address", default=None, help="existing Ray cluster, e.g. auto or HOST:PORT")
    p.add_argument("--output", default=None, help="run directory, also Tune's storage (shared storage on a cluster)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoints")
    p.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial (from its checkpoint)")
    p.add_argument("--retrain-top", type=int, default=None, metavar="K",
                   help="after the search, train each trial's derived arch from scratch (K=0), "
                        "plus the K best-scored archs of each trial (K>0); see harness.evaluate")
    p.add_argument("--retrain-epochs", type=int, default=None,
                   help="epochs of that training (default: the nb201 recipe's 200)")
    p.add_argument("--list-methods", action="store_true", help="print the registered methods and exit")
    return p


# --------------------------------------------------------------------------- the run plan


@dataclass
class Plan:
    methods: list[str]
    seeds: list[int]
    experiment: ExperimentConfig
    method_configs: dict[str, dict[str, Any]]   # resolved once, here; what every trial runs
    output: Path
    context: RunContext
    benchmark: str | None

    def trial_configs(self) -> list[dict[str, Any]]:
        return [{"method": m, "seed": s, "experiment": self.experiment.to_dict(),
                 "method_config": self.method_configs[m]} for m in self.methods for s in self.seeds]


def _methods(text: str, space: str = "nb201") -> list[str]:
    from methods.registry import get_method

    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise UsageError("--methods is empty; e.g. --methods spos,params")
    for m in methods:
        try:
            get_method(m, space)
        except KeyError as err:
            raise UsageError(f"{err.args[0]}; pass them with --methods") from None
    if len(set(methods)) != len(methods):
        raise UsageError(f"--methods lists a method twice: {text}")
    return methods


def make_plan(args: argparse.Namespace) -> Plan:
    from harness.data import DATASETS
    from methods.registry import get_method

    if args.space not in SPACES:
        raise UsageError(f"unknown space {args.space!r}; spaces: {', '.join(SPACES)}")
    methods = _methods(args.methods, args.space)
    seeds = parse_seeds(args.seeds)
    if args.dataset not in DATASETS:
        raise UsageError(f"unknown dataset {args.dataset!r}; datasets: {', '.join(DATASETS)}")
    if args.N is not None:
        fixed = [m for m in methods if args.space != "nb201" or not getattr(get_method(m), "uses_setup_N", True)]
        if fixed:
            raise UsageError(f"--N does not apply to {', '.join(fixed)}, whose depth is its own config field "
                             "(e.g. --set pdarts.stage_cells=1,3,5); drop --N or that method")
    try:
        exp = ExperimentConfig.preset(
            args.budget, space=args.space, dataset=args.dataset, data_root=resolve_path(args.data_root),
            download=not args.no_download, cache_dir=resolve_path(args.cache_dir),
            benchmark=gt_io.benchmark_path(_benchmark_arg(args), args.space), metric=args.metric, epochs=args.epochs,
            eval_archs=args.eval_archs, arch_seed=args.arch_seed, eval_every=args.eval_every,
            C=args.C, N=args.N, device=args.device,
            **({"train_per_class": args.train_per_class} if args.train_per_class else {}),
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.space == "darts" and exp.benchmark is not None:
        raise UsageError("the DARTS space has no tabular ground truth: drop --benchmark (a run reports each method's "
                         "genotype, its size and search cost; train them with --retrain-top or harness.evaluate)")
    overrides = parse_overrides(args.set, methods, args.space)
    output = Path(args.output or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}").expanduser().resolve()
    context = build_context(exp, output)
    if context.truth is not None:  # the reference points every ranking report shows (milliseconds each)
        from methods.baselines import BASELINES

        methods += [b for b in BASELINES if b not in methods]
    resolved = {}
    for m in methods:  # resolve every method config now: a bad override fails before Ray starts
        try:
            resolved[m] = trial_config(exp, m, 0, overrides.get(m, {}))["method_config"]
        except (ValueError, TypeError) as err:
            raise UsageError(f"{m} config: {err}") from None
    return Plan(methods, seeds, exp, resolved, output, context, exp.benchmark)


def _benchmark_arg(args: argparse.Namespace) -> str | None:
    """``--benchmark`` as given; in the DARTS space the default ``builtin`` means none."""
    if args.space == "darts" and args.benchmark in (None, "builtin"):
        return "none"
    return args.benchmark


def build_context(exp: ExperimentConfig, output: Path) -> RunContext:
    """The evaluation archs and their ground truth: identical for every trial of the run."""
    from spaces.nb201 import all_archs, unique_archs

    if exp.space == "darts":  # no tabular ground truth: nothing to rank, each method derives a genotype
        return RunContext(archs=[], unique_mask=[], arch_set="none (the DARTS space has no tabular ground truth)",
                          output=str(output), provenance=provenance())

    spec = parse_eval_archs(exp.eval_archs)
    if spec == "all":
        archs, described = list(all_archs()), "all 15,625 cells"
    elif spec == "unique":
        archs, described = unique_archs(), "the 6,466 benchmark-distinct cells"
    else:
        archs = random.Random(exp.arch_seed).sample(list(all_archs()), int(spec))
        described = f"seeded sample of {spec} from the 15,625 cells (arch seed {exp.arch_seed})"
    seen: set[str] = set()
    unique_mask = []
    for a in archs:
        key = a.canonical()
        unique_mask.append(key not in seen)
        seen.add(key)
    strings = [a.to_str() for a in archs]
    truth = truth_of_all = metric = None
    if exp.benchmark:
        gt = gt_io.load(exp.benchmark)
        metric = gt_io.metric_column(gt, exp.benchmark, exp.dataset, exp.metric)
        truth = gt_io.values_for(gt, exp.benchmark, strings, metric)
        truth_of_all = dict(zip(gt.archs, gt_io.values_for(gt, exp.benchmark, gt.archs, metric)))
    return RunContext(archs=strings, unique_mask=unique_mask, arch_set=described, truth=truth,
                      truth_of_all=truth_of_all, metric=metric, output=str(output), provenance=provenance())


def check_data(exp: ExperimentConfig) -> str:
    """Load the dataset once on the driver: a bad root fails here (exit 2), and the cache is warm."""
    from harness.data import DataError, load_dataset

    try:
        data = load_dataset(exp.dataset, exp.data_root, cache_dir=exp.cache_dir, download=exp.download,
                            synthetic_train=exp.synthetic_train, synthetic_test=exp.synthetic_test)
    except DataError as err:
        raise UsageError(str(err)) from None
    return f"{data.name}: {len(data.train)} train / {len(data.test)} test images ({data.source})"


# --------------------------------------------------------------------------- running it


def _done_line(result: Any) -> str:
    tau = result.get("kendall_tau")
    extra = f" tau {tau:.3f}" if isinstance(tau, float) else ""
    return f"finished: derived {result.get('derived_arch')}{extra}"


SEARCH_TRIALS = TrialSpec(name_of=lambda c: trial_name(c["method"], c["seed"]),
                          key_of=lambda c: (c["method"], int(c["seed"])), done_line=_done_line,
                          progress_keys=("train_loss", "train_acc", "kendall_tau"))


def resources_of(args: argparse.Namespace) -> Resources:
    return Resources(cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, address=args.address,
                     num_gpus=args.num_gpus, max_failures=args.max_failures)


def run(plan: Plan, resources: Resources, resume: bool) -> dict[tuple, str]:
    """The plan's trials through the run layer; {(method, seed): reason} of those that failed."""
    grid: dict[str, Sequence[Any]] = {"method": plan.methods, "seed": plan.seeds}
    constants = {"experiment": plan.experiment.to_dict(), "method_configs": plan.method_configs}
    return run_trials(_trainable, plan.context, SEARCH_TRIALS, storage=plan.output, name="tune",
                      resources=resources, grid=grid, constants=constants, resume=resume)


def _trainable(config: dict[str, Any], context: RunContext) -> None:
    """Tune's grid point (method, seed + the shared resolved configs) -> the trial's own config."""
    ray_trainable({"method": config["method"], "seed": config["seed"], "experiment": config["experiment"],
                   "method_config": config["method_configs"][config["method"]]}, context)


def _write_run_json(plan: Plan, data_info: str) -> None:
    record = {
        "command": "python -m harness.compare " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "methods": plan.methods, "seeds": plan.seeds, "experiment": plan.experiment.to_dict(),
        "method_configs": plan.method_configs, "arch_set": plan.context.arch_set, "benchmark": plan.benchmark,
        "metric": plan.context.metric, "data": data_info, "provenance": plan.context.provenance,
    }
    (plan.output / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    (plan.output / "archs.txt").write_text("\n".join(plan.context.archs) + "\n")


def _plan_from_run_json(output: Path) -> Plan:
    """The run as it was planned: the stored experiment and resolved method configs (never the
    current presets, which may have changed since)."""
    record = read_json(output / "run.json")
    if record is None or "method_configs" not in record:
        raise UsageError(f"{output / 'run.json'} is missing or from an older version without resolved configs; "
                         "start a new run")
    exp = ExperimentConfig.from_dict(record["experiment"])
    return Plan(record["methods"], record["seeds"], exp, record["method_configs"], output,
                build_context(exp, output), exp.benchmark)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_methods:
        from methods.registry import available_methods, describe

        space = args.space if args.space in ("nb201", "darts") else "nb201"
        print("\n".join(f"{name:<12} {describe(name, space)}" for name in available_methods(space)))
        return 0
    try:
        if args.resume:
            if not args.output:
                raise UsageError("--resume needs --output RUN_DIR (the directory of the run to continue)")
            output = Path(args.output).expanduser().resolve()
            if not (output / "run.json").exists() or not (output / "tune").exists():
                raise UsageError(f"nothing to resume in {output}: no run.json / tune/ there; start a run "
                                 "without --resume")
            plan = _plan_from_run_json(output)
            print(f"resuming {output} with its saved configuration (other flags are ignored)")
        else:
            plan = make_plan(args)
            if (plan.output / "tune").exists():
                raise UsageError(f"{plan.output} already holds a run; pass --resume to continue it, "
                                 "or another --output")
        from harness.evaluate import check_retrain_args

        check_retrain_args(args.retrain_top, args.retrain_epochs)  # bad values fail before the search
        resources = resources_of(args)
        check_local_resources(resources)
        data_info = check_data(plan.experiment)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    plan.output.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        _write_run_json(plan, data_info)
    print(f"run directory: {plan.output}")
    print(f"data: {data_info}")
    print(f"methods: {', '.join(plan.methods)} | seeds: {plan.seeds} | budget: {plan.experiment.budget} | "
          f"archs: {plan.context.arch_set}")
    if plan.experiment.space == "darts":
        print("DARTS space: no tabular ground truth; each trial derives a genotype, reported with its parameters and "
              "multiply-adds at the evaluation size (train them with --retrain-top or harness.evaluate)")
    elif plan.context.truth is None:
        print("--benchmark none: no ground truth, so no ranking metrics; the run searches and reports derived archs")
    else:
        print(f"ground truth: {plan.benchmark} ({plan.context.metric})")
    try:
        errors = run(plan, resources, args.resume)
    except UsageError as err:  # a cluster without the resources asked for
        print(f"error: {err}", file=sys.stderr)
        return 2
    expected = [(m, s) for m in plan.methods for s in plan.seeds]
    summary = write_report(plan.output, expected, errors)
    print()
    print(format_table(summary, plan.experiment.space))
    print(f"\nwrote {plan.output / 'summary.csv'}, {plan.output / 'report.md'}")
    failed = summary[summary["status"] != "ok"]
    if len(failed):
        print(f"{len(failed)} of {len(summary)} trials did not succeed (reasons above and in summary.csv)")
    if args.retrain_top is not None:
        from harness.evaluate import format_table as format_evaluation, retrain_after_search

        try:
            evaluation = retrain_after_search(plan.output, args.retrain_top, args.retrain_epochs, resources=resources)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(format_evaluation(evaluation))
        if (evaluation["status"] != "ok").any():
            return 1
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
