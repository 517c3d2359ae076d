"""What clusters do to a sweep, and that nothing is lost: a killed driver, a killed worker, a
checkpoint cut short mid-write, a second ``--resume``; and trials sharing logical GPUs.

Every run is a real ``python -m harness.compare`` through Ray Tune on a local Ray instance; the
uninterrupted reference is the same trials run in-process (the same trial code, one torch
thread as in a Ray worker with one CPU), so "identical" means bit for bit.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.loop import EPOCH_FILE, PREVIOUS_FILE, STATE_FILE, LocalSession

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["--methods", "spos", "--seeds", "0,1", "--budget", "smoke", "--dataset", "synthetic", "--epochs", "4",
         "--benchmark", "none"]


def env_for(cache: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "NAS_HARNESS_CACHE": str(cache), "PYTHONUNBUFFERED": "1", **extra}


def compare(*args: str, cache: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.compare", *args], cwd=ROOT, env=env_for(cache, **extra),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> dict[str, pd.DataFrame]:
    """The sweep's trials run in-process without interruption: {trial name: scores.csv}."""
    from harness.compare import build_parser, make_plan
    from harness.trial import run_trial, trial_name

    os.environ["NAS_HARNESS_CACHE"] = str(cache)
    out = tmp_path_factory.mktemp("reference") / "run"
    plan = make_plan(build_parser().parse_args([*SWEEP, "--output", str(out)]))
    scores = {}
    for config in plan.trial_configs():
        name = trial_name(config["method"], config["seed"])
        run_trial(config, plan.context, LocalSession(out / "checkpoints" / name))
        scores[name] = pd.read_csv(out / "trials" / name / "scores.csv")
    return scores


def assert_same_scores(run: Path, reference: dict[str, pd.DataFrame], names: list[str]) -> None:
    for name in names:
        got = pd.read_csv(run / "trials" / name / "scores.csv")
        assert list(got["arch"]) == list(reference[name]["arch"])
        assert np.array_equal(got["score"].to_numpy(), reference[name]["score"].to_numpy()), name  # bit for bit


def checkpointed_epochs(run: Path, name: str) -> list[int]:
    """Epochs with a complete Tune checkpoint of the trial on disk."""
    out = []
    for d in (run / "tune" / name).glob("checkpoint_*"):
        if (d / EPOCH_FILE).exists() and (d / STATE_FILE).exists():
            out.append(int(json.loads((d / EPOCH_FILE).read_text())["epoch"]))
    return sorted(out)


def fingerprint(trial: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(trial.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- in-process sessions


def test_local_checkpoints_are_atomic_and_a_truncated_one_falls_back(tmp_path, capsys):
    session = LocalSession(tmp_path)
    for epoch in (1, 2):
        session.report({"epoch": epoch}, {"epoch": epoch, "w": torch.full((3,), float(epoch))})
    assert sorted(p.name for p in tmp_path.iterdir()) == [PREVIOUS_FILE, STATE_FILE]  # no .tmp left behind
    assert LocalSession(tmp_path).restore()["epoch"] == 2

    state = tmp_path / STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # cut short, as by a crash mid-write
    restored = LocalSession(tmp_path).restore()
    assert restored is not None and restored["epoch"] == 1 and torch.equal(restored["w"], torch.ones(3))
    assert f"checkpoint {state} is unreadable" in capsys.readouterr().out

    (tmp_path / PREVIOUS_FILE).write_bytes(b"garbage")
    fresh = LocalSession(tmp_path)
    assert fresh.restore() is None  # nothing usable: the trial starts over, with a message per file
    assert len(fresh.messages) == 2 and fresh.messages[-1].endswith("starting the trial over")


def test_a_checkpoint_that_is_not_plain_data_is_refused(tmp_path):
    """Checkpoints load with weights_only=True: a pickled object (code) in one is refused."""
    torch.save({"epoch": 1, "payload": Path("x")}, tmp_path / STATE_FILE)  # not tensors / containers
    session = LocalSession(tmp_path)
    assert session.restore() is None
    assert "Unpickl" in session.messages[0] or "weights_only" in session.messages[0]


# --------------------------------------------------------------------------- through Ray


@pytest.mark.smoke
def test_killed_driver_and_cut_checkpoint_then_resume_loses_nothing(tmp_path, cache, reference):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "harness.compare", *SWEEP, "--output", str(out)], cwd=ROOT,
                            env=env_for(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # both trials have checkpoints, neither has finished
            done = [checkpointed_epochs(out, f"spos-seed{s}") for s in (0, 1)]
            if all(len(d) >= 2 for d in done):
                break
            if proc.poll() is not None:
                pytest.fail("the run ended before it could be killed:\n" + proc.stdout.read()[-3000:])
            time.sleep(0.1)
        else:
            pytest.fail("no two checkpoints within 300 s")
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, as a crash or an OOM kill would
        proc.wait()
        time.sleep(2)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the local Ray instance outlived it
        except ProcessLookupError:
            pass
    kept = {s: checkpointed_epochs(out, f"spos-seed{s}") for s in (0, 1)}
    before = {s: pd.read_csv(out / "trials" / f"spos-seed{s}" / "history.csv") for s in (0, 1)}
    assert not (out / "trials" / "spos-seed0" / "result.json").exists() or \
        not (out / "trials" / "spos-seed1" / "result.json").exists()

    # a crash while copying seed1's newest checkpoint: its state file is cut in half
    newest = max((d for d in (out / "tune" / "spos-seed1").glob("checkpoint_*") if (d / EPOCH_FILE).exists()),
                 key=lambda d: json.loads((d / EPOCH_FILE).read_text())["epoch"])
    cut_epoch = json.loads((newest / EPOCH_FILE).read_text())["epoch"]
    state = newest / STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    resumed = compare("--output", str(out), "--resume", cache=cache)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"checkpoint {state} is unreadable" in resumed.stdout + resumed.stderr
    assert set(pd.read_csv(out / "summary.csv")["status"]) == {"ok"}
    assert_same_scores(out, reference, ["spos-seed0", "spos-seed1"])
    for s in (0, 1):
        after = pd.read_csv(out / "trials" / f"spos-seed{s}" / "history.csv")
        assert list(after["epoch"]) == [1, 2, 3, 4]  # nothing lost, nothing twice
        # epochs whose checkpoint survived were not run again: their rows (timings included) are
        # the rows written before the kill
        safe = max(e for e in kept[s] if s == 0 or e != cut_epoch)
        rows = before[s][before[s]["epoch"] <= safe].reset_index(drop=True)
        pd.testing.assert_frame_equal(after[after["epoch"] <= safe].reset_index(drop=True)[rows.columns], rows)

    # --resume of a finished run rewrites no trial file
    prints = {s: fingerprint(out / "trials" / f"spos-seed{s}") for s in (0, 1)}
    again = compare("--output", str(out), "--resume", cache=cache)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {s: fingerprint(out / "trials" / f"spos-seed{s}") for s in (0, 1)} == prints


@pytest.mark.smoke
@pytest.mark.parametrize("max_failures", [1, 0])
def test_a_killed_worker_retries_from_its_checkpoint_or_fails_alone(tmp_path, cache, reference, max_failures):
    out = tmp_path / "run"
    proc = compare(*SWEEP, "--max-failures", str(max_failures), "--output", str(out), cache=cache,
                   NAS_HARNESS_FAULT="kill-worker:spos-seed0:2")
    summary = pd.read_csv(out / "summary.csv").set_index("seed")
    assert (out / "trials" / "spos-seed0" / ".fault-injected").exists()  # the worker did die mid-epoch 2
    if max_failures:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert list(summary["status"]) == ["ok", "ok"]
        assert list(pd.read_csv(out / "trials" / "spos-seed0" / "history.csv")["epoch"]) == [1, 2, 3, 4]
        assert_same_scores(out, reference, ["spos-seed0", "spos-seed1"])
    else:
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert summary.loc[0, "status"] == "failed" and summary.loc[1, "status"] == "ok"
        reason = str(summary.loc[0, "error"])
        assert "died" in reason.lower() or "worker" in reason.lower(), reason
        assert_same_scores(out, reference, ["spos-seed1"])


@pytest.mark.smoke
def test_logical_gpus_run_four_trials_at_once_on_the_cpu(tmp_path, cache):
    out = tmp_path / "run"
    proc = compare("--methods", "spos", "--seeds", "0-3", "--budget", "smoke", "--dataset", "synthetic",
                   "--epochs", "3", "--benchmark", "none", "--num-gpus", "2", "--gpus-per-trial", "0.5",
                   "--cpus-per-trial", "0.5", "--output", str(out), cache=cache)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((out / "trials" / f"spos-seed{s}" / "result.json").read_text()) for s in range(4)]
    # Ray gave every trial half a logical GPU (two per GPU id) while torch saw none: each computed on the CPU
    assert sorted(r["cuda_visible_devices"] for r in results) == ["0", "0", "1", "1"]
    assert all(r["device"].startswith("cpu") for r in results)
    # all four ran at the same time: the last to start started before the first to finish finished
    assert max(r["started_at"] for r in results) < min(r["finished_at"] for r in results)
