"""The one run layer under ``harness.compare`` and ``harness.evaluate``.

Start Ray (or join a cluster), check that the resources a trial asks for exist there (a request
no node can meet would otherwise wait forever), build the Tuner or restore it, run it with one
progress line per trial epoch, and return the failed trials with their reasons. The CLIs only
say *what* to run (a trainable, its shared context, the grid) and report what came back.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from harness.config import UsageError
from harness.progress import progress_callback


@dataclass(frozen=True)
class Resources:
    """Where trials run and what each one reserves (the CLIs' ``--cpus-per-trial`` etc.)."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None      # an existing cluster (``auto`` or HOST:PORT); None: a local Ray
    num_gpus: int | None = None     # logical GPUs of a local Ray instance
    max_failures: int = 0           # retries of a failed trial, from its last checkpoint


@dataclass(frozen=True)
class TrialSpec:
    """What the progress lines and the error table need to know about a trial's config."""

    name_of: Callable[[Mapping[str, Any]], str]           # the trial's folder name, e.g. spos-seed0
    key_of: Callable[[Mapping[str, Any]], tuple]          # its key in the error table
    done_line: Callable[[Mapping[str, Any]], str]         # the line printed when it finishes
    progress_keys: Sequence[str] = ("train_loss", "train_acc")
    width: int = 18


def check_resources(resources: Resources, available: Mapping[str, float]) -> None:
    """Raise ``UsageError`` when no node could ever run a trial of this size."""
    gpus, cpus = available.get("GPU", 0.0), available.get("CPU", 0.0)
    if resources.gpus_per_trial > gpus:
        raise UsageError(f"--gpus-per-trial {resources.gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs; "
                         "run on a GPU machine, use --gpus-per-trial 0, or declare logical GPUs with --num-gpus N")
    if resources.cpus_per_trial > cpus:
        raise UsageError(f"--cpus-per-trial {resources.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs; "
                         "lower --cpus-per-trial")


def check_local_resources(resources: Resources) -> None:
    """Without ``--address`` the cluster is this machine: check it before starting Ray at all, so
    a request it cannot meet fails with one line and nothing started."""
    if resources.address:
        return  # a cluster's resources are known once connected (``run_trials`` checks them there)
    import torch

    gpus = resources.num_gpus if resources.num_gpus is not None else torch.cuda.device_count()
    check_resources(resources, {"GPU": float(gpus), "CPU": float(os.cpu_count() or 1)})


@contextlib.contextmanager
def ray_running(resources: Resources) -> Iterator[dict[str, float]]:
    """Ray, started here (and shut down after) unless the caller already started it.

    Yields the cluster's resources. A second run in the same driver (``compare --retrain-top``
    after its search) reuses the running instance.
    """
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started = False
    if not ray.is_initialized():
        # log_to_driver: the methods' progress lines (one per 30 s of a long phase) are printed in
        # the trial processes; Ray forwards them, prefixed with the worker's name.
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                  "log_to_driver": True}
        if resources.address:
            from harness.cluster import connect

            connect(resources.address, kwargs)  # one UsageError line when it cannot work
        else:
            if resources.num_gpus is not None:
                kwargs["num_gpus"] = resources.num_gpus
            ray.init(**kwargs)
        started = True
    try:
        yield dict(ray.cluster_resources())
    finally:
        if started:
            ray.shutdown()


def run_trials(trainable: Callable[..., None], context: Any, spec: TrialSpec, *, storage: Path, name: str,
               resources: Resources, grid: Mapping[str, Sequence[Any]] | None = None,
               constants: Mapping[str, Any] | None = None, resume: bool = False) -> dict[tuple, str]:
    """Run every point of ``grid`` (× ``constants``) as a Tune trial, or continue ``storage/name``.

    ``trainable(config, context)`` is a function trainable; ``context`` goes to the object store
    once. Returns ``{spec.key_of(config): last line of the error}`` for the trials that failed.
    """
    from ray import tune

    with ray_running(resources) as available:
        check_resources(resources, available)
        wrapped = tune.with_resources(tune.with_parameters(trainable, context=context),
                                      {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial})
        if resume:
            tuner = tune.Tuner.restore(str(storage / name), trainable=wrapped, resume_unfinished=True,
                                       resume_errored=True)
        else:
            def trial_name(trial: Any) -> str:
                return spec.name_of(trial.config)

            param_space = {key: tune.grid_search(list(values)) for key, values in (grid or {}).items()}
            param_space.update(constants or {})
            tuner = tune.Tuner(
                wrapped, param_space=param_space,
                tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name),
                run_config=tune.RunConfig(
                    name=name, storage_path=str(storage), verbose=0,
                    callbacks=[progress_callback(spec.name_of, spec.done_line, spec.progress_keys, width=spec.width)],
                    failure_config=tune.FailureConfig(max_failures=resources.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
            )
        results = tuner.fit()
    errors: dict[tuple, str] = {}
    for result in (results[i] for i in range(len(results))):
        if result.error is not None and result.config:
            lines = [ln for ln in str(result.error).strip().splitlines() if ln.strip()]
            errors[spec.key_of(result.config)] = lines[-1][:500] if lines else "error"
    return errors
