"""``python -m harness.evaluate``: train architectures from scratch as Ray Tune trials.

    python -m harness.evaluate --arch '|nor_conv_3x3~0|+|...|' --dataset cifar10 --data-root PATH
    python -m harness.evaluate --from runs/study --top-k 3 --epochs 50 --seeds 0-2
    python -m harness.evaluate --dataset imagenet --data-root /data/imagenet --arch '...' --gpus-per-trial 1
    python -m harness.evaluate --output runs/eval --resume
    python -m harness.evaluate --space darts --genotype 'Genotype(normal=[...], ...)' --recipe darts-cifar

Why trials: a from-scratch run is hours per arch on a GPU, so each arch x seed is one Tune
trial that checkpoints every epoch (``--resume`` continues from the last one) and is scheduled
on whatever GPUs the cluster has. The trial logic (``run_evaluation_trial``) talks to a
session, exactly like the search trial in ``harness.trial``: ``RaySession`` under Tune,
``LocalSession`` in-process (tests).

Files: ``<output>/evaluation/<trial>/`` (config.json, history.csv, result.json or error.txt),
``<output>/evaluation.csv`` (one row per arch x seed), ``<output>/evaluation.md`` and, for a
search run (``--from RUN_DIR`` or ``harness.compare --retrain-top``), an ``## Evaluation``
section in ``RUN_DIR/report.md`` (replaced, not duplicated, when the evaluation is rerun).

Bad input exits 2 with one ``error: ...`` line; a finished evaluation exits 0 when every trial
succeeded and 1 otherwise.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from harness import truth as gt_io
from harness.config import UsageError, parse_seeds
from harness.evaluation_plan import (PLAN_FILE, SPACES, EvalPlan, archs_from_run, build_plan, canonical_genotype,
                                     check_data, run_space)
from harness.evaluation_report import format_table, rank_correlation, write_outputs
from harness.evaluation_trial import eval_trial_name, ray_eval_trainable
from harness.files import read_json, resolve_path, write_json
from harness.runner import Resources, TrialSpec, check_local_resources, run_trials

TUNE_DIR = "tune-evaluate"         # Tune's experiment folder (beside a search run's tune/)

__all__ = ["EvalPlan", "archs_from_run", "build_plan", "check_retrain_args", "retrain_after_search", "run_plan",
           "main"]


# --------------------------------------------------------------------------- running it


def _done_line(result: Any) -> str:
    truth = result.get("truth")
    extra = f" (ground truth {truth:.2f})" if isinstance(truth, (int, float)) else ""
    return f"finished: test top-1 {result.get('test_top1'):.2f} top-5 {result.get('test_top5'):.2f}{extra}"


EVALUATION_TRIALS = TrialSpec(name_of=lambda c: eval_trial_name(c["arch"], c["seed"]),
                              key_of=lambda c: (c["arch"], int(c["seed"])), done_line=_done_line,
                              progress_keys=("train_loss", "train_acc", "test_top1", "lr"), width=28)


def run_plan(plan: EvalPlan, resources: Resources, resume: bool = False) -> dict[tuple, str]:
    """Run (or continue) the plan's trials; return {(arch, seed): error line} of the failures.

    Reuses an already-initialised Ray (``harness.compare`` after its search), else starts one.
    """
    return run_trials(ray_eval_trainable, plan.context, EVALUATION_TRIALS, storage=plan.output, name=TUNE_DIR,
                      resources=resources, grid={"arch": plan.archs, "seed": plan.seeds},
                      constants={"job": plan.job.to_dict(), "recipe": plan.recipe.to_dict()}, resume=resume)


# --------------------------------------------------------------------------- compare.py hook


def check_retrain_args(top_k: int | None, epochs: int | None) -> None:
    """Validate ``--retrain-top`` / ``--retrain-epochs`` before the search starts (UsageError)."""
    if top_k is None:
        return
    if top_k < 0:
        raise UsageError(f"--retrain-top must be >= 0 (0: each trial's derived arch only), got {top_k}")
    if epochs is not None and epochs < 1:
        raise UsageError(f"--retrain-epochs must be >= 1, got {epochs}")



def retrain_after_search(run_dir: str | Path, top_k: int = 0, epochs: int | None = None, *,
                         seeds: Sequence[int] = (0,), recipe_name: str | None = None,
                         recipe_overrides: Mapping[str, Any] | None = None, train_images: int | None = None,
                         test_images: int | None = None, resources: Resources = Resources(),
                         device: str | None = None, resume: bool | None = None) -> pd.DataFrame:
    """Train the archs a finished search picked, inside the same run directory.

    ``top_k=0``: each trial's derived arch; ``top_k>0``: also the ``top_k`` best-scored archs of
    each trial's ``scores.csv`` (deduplicated). Data, benchmark and device come from
    ``RUN_DIR/run.json``; ``epochs`` overrides the recipe's (default NB201: 200). Writes
    ``RUN_DIR/evaluation.csv``, ``RUN_DIR/evaluation.md`` and the ``## Evaluation`` section of
    ``RUN_DIR/report.md``; returns the evaluation table. ``resume=None`` continues an earlier
    evaluation of this run when there is one. Reuses an initialised Ray, else starts one.
    Raises ``UsageError`` on bad input.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    check_retrain_args(top_k, epochs)
    if resume is None:
        resume = (run_dir / TUNE_DIR).exists() and (run_dir / PLAN_FILE).exists()
    if resume:
        record = read_json(run_dir / PLAN_FILE)
        if record is None:
            raise UsageError(f"nothing to resume in {run_dir}: no readable {PLAN_FILE}")
        plan = EvalPlan.from_dict(record, run_dir)
    else:
        run = read_json(run_dir / "run.json") or {}
        exp = run.get("experiment", {})
        overrides = dict(recipe_overrides or {})
        if epochs is not None:
            overrides["epochs"] = epochs
        space = run_space(run_dir)
        plan = build_plan(space=space,
            archs=archs_from_run(run_dir, top_k), seeds=list(seeds), dataset=exp.get("dataset", "cifar10"),
            recipe_name=recipe_name, recipe_overrides=overrides, output=run_dir,
            job_fields=_job_fields_from_run(exp, train_images=train_images, test_images=test_images,
                                            device=device, cpus_per_trial=resources.cpus_per_trial),
            benchmark=run.get("benchmark") if space == "nb201" else None, metric=None, from_run=run_dir,
            command=f"harness.compare --retrain-top {top_k}" + (f" --retrain-epochs {epochs}" if epochs else ""))
        check_data(plan)
        write_json(run_dir / PLAN_FILE, plan.to_dict())
    print(f"evaluating {len(plan.archs)} arch(s) x {len(plan.seeds)} seed(s) from scratch "
          f"(recipe {plan.recipe.name}, {plan.recipe.epochs} epochs)", flush=True)
    errors = run_plan(plan, resources, resume=resume)
    return write_outputs(plan, errors)


def _job_fields_from_run(exp: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """EvalJob fields: the search run's data source, overridden by what the caller gives."""
    cpus = given.pop("cpus_per_trial", None)
    fields = {k: exp[k] for k in ("data_root", "cache_dir", "download", "synthetic_train", "synthetic_test",
                                  "device") if exp.get(k) is not None}
    fields.update({k: v for k, v in given.items() if v is not None})
    if cpus is not None:
        fields.setdefault("threads", max(1, int(cpus)))
    return fields


# --------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other bad input
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m harness.evaluate",
                description="Train NB201 cells or DARTS genotypes from scratch: one Ray Tune trial per arch x seed, "
                            "checkpointed every epoch; writes evaluation.csv and evaluation.md.")
    src = p.add_argument_group("what to train")
    src.add_argument("--space", default=None, choices=SPACES,
                     help="search space of the archs: nb201 (default) | darts (default: the --from run's)")
    src.add_argument("--genotype", action="append", default=[], metavar="TEXT",
                     help="--space darts: a genotype, e.g. \"Genotype(normal=[('sep_conv_3x3', 0), ...], "
                          "normal_concat=range(2, 6), reduce=[...], reduce_concat=range(2, 6))\" (repeatable)")
    src.add_argument("--genotypes", default=None, metavar="FILE",
                     help="--space darts: a file with one genotype per line (blank lines and # comments skipped)")
    src.add_argument("--arch", action="extend", nargs="+", default=[], metavar="ARCH",
                     help="NB201 arch string(s), e.g. '|nor_conv_3x3~0|+|...|' (repeatable)")
    src.add_argument("--from", dest="from_run", default=None, metavar="RUN_DIR",
                     help="a harness.compare run: evaluate every trial's derived arch (trials/*/derived.json)")
    src.add_argument("--top-k", type=int, default=0, help="with --from: also the K best-scored archs of each trial")
    src.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2 or 0-2")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=None, help="cifar10 | cifar100 | imagenet | synthetic "
                                                      "(default: the --from run's, else cifar10)")
    data.add_argument("--data-root", default=None, help="CIFAR folder / ImageFolder .tar.gz; ImageNet: a dir with train/ and val/")
    data.add_argument("--no-download", action="store_true", help="never download CIFAR (offline machines)")
    data.add_argument("--cache-dir", default=None, help="where decoded datasets are cached")
    data.add_argument("--train-images", type=int, default=None, help="stratified subset of the training set (quick checks)")
    data.add_argument("--test-images", type=int, default=None, help="stratified subset of the test/val set")
    data.add_argument("--benchmark", default=None,
                      help="ground truth for the truth column: a table path, 'builtin' (NAS-Bench-201) or 'none' "
                           "(default: the --from run's, else the built-in table for CIFAR); a NAS-Bench-201 .pth "
                           "or NATS-Bench dir is a pickle, unpickled as code: trusted files only")
    data.add_argument("--metric", default=None, help="ground-truth column (default: the dataset's test accuracy)")
    rec = p.add_argument_group("recipe (benchmarks.train)")
    rec.add_argument("--recipe", default=None, help="nb201 (CIFAR) | imagenet | darts-cifar | darts-imagenet "
                                                    "(default: by space and dataset)")
    rec.add_argument("--epochs", type=int, default=None, help="training epochs (nb201: 200)")
    rec.add_argument("--C", type=int, default=None, help="network width (nb201: 16)")
    rec.add_argument("--N", type=int, default=None, help="cells per stage (nb201: 5)")
    rec.add_argument("--layers", type=int, default=None, help="DARTS cells in all (darts-cifar: 20, darts-imagenet: 14)")
    rec.add_argument("--batch-size", type=int, default=None)
    rec.add_argument("--lr", type=float, default=None)
    rec.add_argument("--workers", type=int, default=None, help="DataLoader workers (imagenet)")
    rec.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="any recipe field, e.g. --set warmup_epochs=1 --set image_size=128 (repeatable)")
    run = p.add_argument_group("running")
    run.add_argument("--cpus-per-trial", type=float, default=1.0)
    run.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed, e.g. 0.5")
    run.add_argument("--num-gpus", type=int, default=None, help="logical GPUs of a local Ray instance")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda (inside each trial)")
    run.add_argument("--address", default=None, help="existing Ray cluster, e.g. auto or HOST:PORT")
    run.add_argument("--output", default=None, help="output directory (default: the --from run, else runs/evaluate-<time>)")
    run.add_argument("--resume", action="store_true", help="continue the evaluation in --output (or --from) from its checkpoints")
    run.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial (from its checkpoint)")
    return p


def _recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.train import RecipeError, coerce_recipe_field

    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects FIELD=VALUE (e.g. warmup_epochs=1), got {item!r}")
        try:
            overrides[key.strip()] = coerce_recipe_field(key.strip(), value.strip())
        except RecipeError as err:
            raise UsageError(f"--set {item!r}: {err}") from None
    flags = {"epochs": args.epochs, "C": args.C, "N": args.N, "batch_size": args.batch_size, "lr": args.lr,
             "workers": args.workers, "layers": args.layers}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return overrides


def make_plan(args: argparse.Namespace, command: str) -> EvalPlan:
    from spaces.nb201 import Arch

    from_run = Path(args.from_run).expanduser().resolve() if args.from_run else None
    if from_run is not None and not from_run.is_dir():
        raise UsageError(f"--from {from_run}: no such directory; pass the --output directory of a harness.compare run")
    space = args.space or (run_space(from_run) if from_run else "nb201")
    if from_run is not None and run_space(from_run) != space:
        raise UsageError(f"--from {from_run} is a {run_space(from_run)}-space run, not --space {space}")
    archs: dict[str, str] = {}
    genotypes = list(args.genotype)
    if args.genotypes:
        path = Path(args.genotypes).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            raise UsageError(f"--genotypes {path}: {err.strerror or err}") from None
        genotypes += [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if space == "darts":
        if args.arch:
            raise UsageError("--arch takes NB201 cells; in --space darts give --genotype TEXT or --genotypes FILE")
        for text in genotypes:
            archs.setdefault(canonical_genotype(text), "--genotype")
    elif genotypes:
        raise UsageError("--genotype / --genotypes need --space darts")
    for text in args.arch:
        try:
            arch = Arch.from_str(text).to_str()
        except ValueError as err:
            raise UsageError(f"--arch {text!r} is not an NB201 cell: {err}") from None
        archs.setdefault(arch, "--arch")
    run: dict[str, Any] = {}
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0, got {args.top_k}")
    if from_run is not None:
        for arch, where in archs_from_run(from_run, args.top_k).items():
            archs[arch] = f"{archs[arch]}; {where}" if arch in archs else where
        run = read_json(from_run / "run.json") or {}
    elif args.top_k:
        raise UsageError("--top-k needs --from RUN_DIR (the scores of a search run)")
    exp = run.get("experiment", {})
    dataset = args.dataset or exp.get("dataset") or "cifar10"
    same_data = not args.dataset or args.dataset == exp.get("dataset")
    base = dict(exp) if same_data else {}
    if args.data_root:
        base["data_root"] = resolve_path(args.data_root)
    if args.cache_dir:
        base["cache_dir"] = resolve_path(args.cache_dir)
    if args.no_download:
        base["download"] = False
    base.pop("device", None)
    job_fields = _job_fields_from_run(base, train_images=args.train_images, test_images=args.test_images,
                                      device=args.device, cpus_per_trial=args.cpus_per_trial)
    output = Path(args.output).expanduser().resolve() if args.output else (
        from_run or Path(f"runs/evaluate-{time.strftime('%Y%m%d-%H%M%S')}").resolve())
    if space == "darts":  # no ground truth in the DARTS space
        benchmark = args.benchmark if args.benchmark and args.benchmark != "none" else None  # refused below
    elif args.benchmark:
        benchmark = gt_io.benchmark_path(args.benchmark)
    elif from_run:
        benchmark = run.get("benchmark")
    else:  # the built-in NAS-Bench-201 table has the CIFAR-10/100 truth of every cell
        benchmark = gt_io.benchmark_path(None) if dataset in ("cifar10", "cifar100", "synthetic") else None
    seeds = parse_seeds(args.seeds)
    return build_plan(archs=archs, seeds=seeds, dataset=dataset, recipe_name=args.recipe,
                      recipe_overrides=_recipe_overrides(args), output=output, job_fields=job_fields,
                      benchmark=benchmark, metric=args.metric, from_run=from_run, command=command, space=space)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python -m harness.evaluate " + " ".join(shlex.quote(a) for a in argv)
    try:
        args = build_parser().parse_args(argv)
        if args.resume:
            target = args.output or args.from_run
            if not target:
                raise UsageError("--resume needs --output DIR (or --from RUN_DIR): the evaluation to continue")
            output = Path(target).expanduser().resolve()
            record = read_json(output / PLAN_FILE)
            if record is None or not (output / TUNE_DIR).exists():
                raise UsageError(f"nothing to resume in {output}: no {PLAN_FILE} / {TUNE_DIR}/ there; "
                                 "start an evaluation without --resume")
            plan = EvalPlan.from_dict(record, output)
            print(f"resuming {output} with its saved configuration (other flags are ignored)")
        else:
            plan = make_plan(args, command)
            if (plan.output / TUNE_DIR).exists():
                raise UsageError(f"{plan.output} already holds an evaluation; pass --resume to continue it, "
                                 "or another --output")
        resources = Resources(cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                              address=args.address, num_gpus=args.num_gpus, max_failures=args.max_failures)
        check_local_resources(resources)
        data_info = check_data(plan)
        plan.output.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            write_json(plan.output / PLAN_FILE, plan.to_dict())
        r = plan.recipe
        print(f"output: {plan.output}")
        print(f"data: {data_info}")
        depth = f"N={r.N}" if r.network == "nb201" else f"{r.layers} cells"
        print(f"recipe: {r.name}, {r.epochs} epochs, C={r.C}, {depth}, batch {r.batch_size}, lr {r.lr:g} | "
              f"{len(plan.archs)} arch(s) x seeds {plan.seeds}")
        for arch in plan.archs:
            print(f"  {eval_trial_name(arch, 0)[:-6]:<22} {arch}  [{plan.context.sources.get(arch, '')}]")
        errors = run_plan(plan, resources, resume=args.resume)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    frame = write_outputs(plan, errors)
    print()
    print(format_table(frame))
    tau, note = rank_correlation(frame)
    if tau is not None:
        print(f"\nKendall tau (test top-1 vs {plan.context.metric}): {tau:.3f} ({note})")
    report = f", {plan.from_run / 'report.md'}" if plan.from_run else ""
    print(f"\nwrote {plan.output / 'evaluation.csv'}, {plan.output / 'evaluation.md'}{report}")
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        print(f"{len(failed)} of {len(frame)} trials did not succeed (reasons above and in evaluation.csv)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
