"""``python -m harness.compare``: methods x seeds as Ray Tune trials, then a ranking report.

    python -m harness.compare --methods hopnas,nap
    python -m harness.compare --methods spos,params --seeds 0-9 --budget cpu \\
        --dataset cifar10 --data-root PATH --benchmark nb201.csv --output runs/x
    python -m harness.compare --output runs/x --resume

Bad input exits 2 with one line saying what to do; a finished run exits 0 when every trial
succeeded and 1 otherwise (failed trials are listed with their reason).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness.config import ExperimentConfig, UsageError, parse_eval_archs, parse_seeds
from harness.progress import progress_callback
from harness.report import format_table, write_report
from harness.trial import RunContext, provenance, ray_trainable, trial_name



# --------------------------------------------------------------------------- arguments


def parse_overrides(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--set spos.lr=0.1`` -> {"spos": {"lr": 0.1}}, typed like the config field."""
    from methods.base import coerce_field, get_method

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, field_name = key.partition(".")
        if not sep or not dot:
            raise UsageError(f"--set expects METHOD.FIELD=VALUE (e.g. spos.lr=0.05), got {item!r}")
        if method not in methods:
            raise UsageError(f"--set {item!r} names method {method!r}, which is not in --methods {','.join(methods)}")
        try:
            out.setdefault(method, {})[field_name] = coerce_field(get_method(method).Config, field_name, value)
        except ValueError as err:
            raise UsageError(f"--set {item!r}: {err}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", default="hopnas,nap", help="comma list of methods (see --list-methods)")
    p.add_argument("--seeds", default="0", help="e.g. 0,1,2 or 0-9")
    p.add_argument("--space", default="nb201", help="search space")
    p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | synthetic")
    p.add_argument("--data-root", default=None,
                   help="torchvision CIFAR folder, or an ImageFolder dir / .tar.gz with train/ and test/")
    p.add_argument("--no-download", action="store_true", help="never download CIFAR (offline machines)")
    p.add_argument("--cache-dir", default=None, help="where decoded datasets are cached (default ~/.cache/nas-harness)")
    p.add_argument("--benchmark", default="builtin",
                   help="ground truth: 'builtin' (the NAS-Bench-201 table shipped with the package: CIFAR-10, "
                        "CIFAR-100 and ImageNet16-120 test accuracy of all 15,625 cells), 'none' (no ranking), "
                        "or a CSV/Parquet table, NAS-Bench-201 .pth file (unpickled: trusted files only) or "
                        "NATS-Bench dir")
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
    overrides: dict[str, dict[str, Any]]
    output: Path
    context: RunContext
    benchmark: str | None


def _benchmark(text: str | None, space: str) -> str | None:
    from benchmarks.ground_truth import resolve_benchmark

    try:
        return resolve_benchmark(text, space)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None


def _resolve_path(text: str | None) -> str | None:
    return str(Path(text).expanduser().resolve()) if text else None


def make_plan(args: argparse.Namespace) -> Plan:
    from methods.base import get_method

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UsageError("--methods is empty; e.g. --methods spos,params")
    for m in methods:
        try:
            get_method(m)
        except KeyError as err:
            raise UsageError(f"{err.args[0]}; pass them with --methods") from None
    if len(set(methods)) != len(methods):
        raise UsageError(f"--methods lists a method twice: {args.methods}")
    seeds = parse_seeds(args.seeds)
    from harness.data import DATASETS

    if args.dataset not in DATASETS:
        raise UsageError(f"unknown dataset {args.dataset!r}; datasets: {', '.join(DATASETS)}")
    try:
        exp = ExperimentConfig.preset(
            args.budget, space=args.space, dataset=args.dataset, data_root=_resolve_path(args.data_root),
            download=not args.no_download, cache_dir=_resolve_path(args.cache_dir),
            benchmark=_benchmark(args.benchmark, args.space), metric=args.metric, epochs=args.epochs,
            eval_archs=args.eval_archs, arch_seed=args.arch_seed, eval_every=args.eval_every,
            C=args.C, N=args.N, device=args.device,
            **({"train_per_class": args.train_per_class} if args.train_per_class else {}),
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    overrides = parse_overrides(args.set, methods)
    for m in methods:  # resolve every method config now: a bad override fails before Ray starts
        from harness.config import method_config

        try:
            method_config(get_method(m), exp.budget, exp.epochs, overrides.get(m, {}))
        except (ValueError, TypeError) as err:
            raise UsageError(f"{m} config: {err}") from None
    output = Path(args.output or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}").expanduser().resolve()
    context = build_context(exp, output)
    if context.truth is not None:  # the reference points every ranking report shows (milliseconds each)
        from methods.baselines import BASELINES

        methods += [b for b in BASELINES if b not in methods]
    return Plan(methods, seeds, exp, overrides, output, context, exp.benchmark)


def build_context(exp: ExperimentConfig, output: Path) -> RunContext:
    """The evaluation archs and their ground truth: identical for every trial of the run."""
    from spaces.nb201 import Arch, all_archs, unique_archs

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
        gt = _load_benchmark(exp.benchmark)
        bad = [s for s in gt.archs[:50000] if not _parses(s, Arch)]
        if bad:
            raise UsageError(f"benchmark {exp.benchmark} does not describe the {exp.space} space: e.g. arch "
                             f"{bad[0]!r} is not an NB201 cell; pass a NAS-Bench-201 / NATS-Bench topology table")
        missing = [s for s in strings if s not in gt]
        if missing:
            raise UsageError(f"benchmark {exp.benchmark} lacks {len(missing)} of the {len(strings)} evaluation archs "
                             f"(e.g. {missing[0]}); pass a table covering all 15,625 NB201 cells")
        try:
            metric = exp.metric or gt.metric_for("cifar10" if exp.dataset == "synthetic" else exp.dataset)
        except ValueError as err:
            raise UsageError(f"benchmark {exp.benchmark}: {err}; pass --metric COLUMN") from None
        truth = [float(v) for v in gt.values(strings, metric)]
        truth_of_all = dict(zip(gt.archs, (float(v) for v in gt.values(gt.archs, metric))))
    return RunContext(archs=strings, unique_mask=unique_mask, arch_set=described, truth=truth,
                      truth_of_all=truth_of_all, metric=metric, output=str(output), provenance=provenance())


def _parses(s: str, arch_cls: Any) -> bool:
    try:
        arch_cls.from_str(s)
        return True
    except ValueError:
        return False


def _load_benchmark(path: str):
    from benchmarks.ground_truth import load_ground_truth

    try:
        return load_ground_truth(path)
    except (OSError, ValueError, KeyError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise UsageError(f"cannot load benchmark {path}: {message}") from None


def check_data(exp: ExperimentConfig) -> str:
    """Load the dataset once on the driver: a bad root fails here (exit 2), and the cache is warm."""
    from harness.data import DataError, load_dataset

    try:
        data = load_dataset(exp.dataset, exp.data_root, cache_dir=exp.cache_dir, download=exp.download,
                            synthetic_train=exp.synthetic_train, synthetic_test=exp.synthetic_test)
    except DataError as err:
        raise UsageError(str(err)) from None
    return f"{data.name}: {len(data.train)} train / {len(data.test)} test images ({data.source})"


# --------------------------------------------------------------------------- Ray


def _done_line(result: dict) -> str:
    tau = result.get("kendall_tau")
    extra = f" tau {tau:.3f}" if isinstance(tau, float) else ""
    return f"finished: derived {result.get('derived_arch')}{extra}"


def _trial_name(trial) -> str:
    return trial_name(trial.config["method"], trial.config["seed"])


def _trainable(plan: Plan, cpus: float, gpus: float):
    from ray import tune

    return tune.with_resources(tune.with_parameters(ray_trainable, context=plan.context), {"cpu": cpus, "gpu": gpus})


def run(plan: Plan, args: argparse.Namespace) -> tuple[int, Any]:
    import ray
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    init_kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                   "log_to_driver": False}
    if args.address:
        init_kwargs["address"] = args.address
    elif args.num_gpus is not None:
        init_kwargs["num_gpus"] = args.num_gpus
    ray.init(**init_kwargs)
    try:
        tune_dir = plan.output / "tune"
        trainable = _trainable(plan, args.cpus_per_trial, args.gpus_per_trial)
        if args.resume:
            tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"method": tune.grid_search(plan.methods), "seed": tune.grid_search(plan.seeds),
                             "experiment": plan.experiment.to_dict(), "overrides": plan.overrides},
                tune_config=tune.TuneConfig(trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
                run_config=tune.RunConfig(
                    name="tune", storage_path=str(plan.output), verbose=0, callbacks=[progress_callback(
                        lambda c: trial_name(c["method"], c["seed"]), _done_line,
                        ("train_loss", "train_acc", "kendall_tau"))],
                    failure_config=tune.FailureConfig(max_failures=args.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                ),
            )
        results = tuner.fit()
    finally:
        ray.shutdown()
    errors = {}
    for result in (results[i] for i in range(len(results))):
        if result.error is not None and result.config:
            lines = [ln for ln in str(result.error).strip().splitlines() if ln.strip()]
            errors[(result.config["method"], int(result.config["seed"]))] = lines[-1][:500] if lines else "error"
    return 0, errors


def _write_run_json(plan: Plan, data_info: str) -> None:
    record = {
        "command": "python -m harness.compare " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "methods": plan.methods, "seeds": plan.seeds, "experiment": plan.experiment.to_dict(),
        "overrides": plan.overrides, "arch_set": plan.context.arch_set, "benchmark": plan.benchmark,
        "metric": plan.context.metric, "data": data_info, "provenance": plan.context.provenance,
    }
    (plan.output / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    (plan.output / "archs.txt").write_text("\n".join(plan.context.archs) + "\n")


def _plan_from_run_json(output: Path) -> Plan:
    record = json.loads((output / "run.json").read_text())
    exp = ExperimentConfig.from_dict(record["experiment"])
    return Plan(record["methods"], record["seeds"], exp, record["overrides"], output,
                build_context(exp, output), exp.benchmark)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_methods:
        from methods.base import available_methods

        print("\n".join(available_methods()))
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
    if plan.context.truth is None:
        print("--benchmark none: no ground truth, so no ranking metrics; the run searches and reports derived archs")
    else:
        print(f"ground truth: {plan.benchmark} ({plan.context.metric})")
    _, errors = run(plan, args)
    expected = [(m, s) for m in plan.methods for s in plan.seeds]
    summary = write_report(plan.output, expected, errors)
    print()
    print(format_table(summary))
    print(f"\nwrote {plan.output / 'summary.csv'}, {plan.output / 'report.md'}")
    failed = summary[summary["status"] != "ok"]
    if len(failed):
        print(f"{len(failed)} of {len(summary)} trials did not succeed (reasons above and in summary.csv)")
    if args.retrain_top is not None:
        from harness.evaluate import format_table as format_evaluation, retrain_after_search

        try:
            evaluation = retrain_after_search(
                plan.output, args.retrain_top, args.retrain_epochs, cpus_per_trial=args.cpus_per_trial,
                gpus_per_trial=args.gpus_per_trial, address=args.address, num_gpus=args.num_gpus,
                max_failures=args.max_failures)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(format_evaluation(evaluation))
        if (evaluation["status"] != "ok").any():
            return 1
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
