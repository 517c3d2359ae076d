"""`harness.compare --address` against real Ray heads started with `ray start`, as a user would.

Two heads run for the module: one with token authentication (Ray >= 2.59's default for
`ray start`), one without. The driver always runs from another working directory. Every way a
connection cannot work must end with exit code 2 and one line, quickly; the heads are stopped
at the end and leave no process of theirs behind (only their own process sessions are touched).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from tests.ray_head import clean_env, free_port, start_head

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.cluster


def test_address_auto_without_a_cluster_is_one_line_and_exit_2(tmp_path, tmp_path_factory):
    """Runs before the module's heads start (`auto` finds any head running on the machine)."""
    proc = driver(["--methods", "params", "--budget", "smoke", "--dataset", "synthetic", "--address", "auto",
                   "--output", str(tmp_path / "run")], tmp_path, tmp_path_factory.mktemp("cache"),
                  RAY_AUTH_TOKEN_PATH=str(tmp_path / "no-token"))
    stdout, stderr = proc.communicate(timeout=120)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, stdout[-2000:] + stderr[-2000:]
    assert lines[0].startswith("error: --address auto found no running Ray cluster"), lines


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "auth_token"
    path.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    return path


@pytest.fixture(scope="module")
def heads(token_file):
    started = {}
    try:
        started["token"] = start_head(token_file)
        started["open"] = start_head(None)
        yield started
    finally:
        left = {name: head.stop() for name, head in started.items()}
        assert not any(left.values()), f"Ray processes of the test heads survived their stop: {left}"


def driver(args: list[str], cwd: Path, cache: Path, timeout: float = 300, **env: str) -> subprocess.Popen:
    """`python -m harness.compare ARGS` run from ``cwd`` (not the checkout), RAY_* cleaned."""
    full_env = clean_env(PYTHONPATH=str(ROOT), NAS_HARNESS_CACHE=str(cache), PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen([sys.executable, "-m", "harness.compare", *args], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


SWEEP = ["--methods", "spos,params", "--seeds", "0,1", "--budget", "smoke", "--dataset", "synthetic", "--epochs", "2"]


def test_a_sweep_runs_on_a_head_with_token_authentication(heads, token_file, tmp_path, tmp_path_factory):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    out = tmp_path / "run"
    cache = tmp_path_factory.mktemp("cache")
    proc = driver([*SWEEP, "--address", heads["token"].address, "--output", str(out)], cwd, cache,
                  RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert f"joining the Ray cluster at {heads['token'].address}: token authentication" in stdout
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(zip(summary["method"], summary["seed"])) == sorted(
        [(m, s) for m in ("spos", "params", "flops", "random") for s in (0, 1)])
    assert set(summary["status"]) == {"ok"}, summary[["method", "seed", "status", "error"]]
    assert summary["kendall_tau"].notna().all()
    for m in ("spos", "params"):
        for s in (0, 1):
            trial = out / "trials" / f"{m}-seed{s}"
            result = json.loads((trial / "result.json").read_text())
            assert result["done"] and result["device"].startswith("cpu")
            assert (trial / "scores.csv").exists() and (trial / "derived.json").exists()
    assert list(pd.read_csv(out / "trials" / "spos-seed0" / "history.csv")["epoch"]) == [1, 2]


def test_address_auto_joins_a_head_without_authentication(heads, tmp_path, tmp_path_factory):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    out = tmp_path / "run"
    proc = driver(["--methods", "params", "--budget", "smoke", "--dataset", "synthetic", "--address", "auto",
                   "--output", str(out)], cwd, tmp_path_factory.mktemp("cache"),
                  RAY_ADDRESS=heads["open"].address, RAY_AUTH_TOKEN_PATH=str(tmp_path / "no-token"))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert set(pd.read_csv(out / "summary.csv")["status"]) == {"ok"}


def test_every_connection_that_cannot_work_is_one_line_and_exit_2(heads, token_file, tmp_path, tmp_path_factory):
    """No token, a wrong token, a token sent to a cluster without authentication, nothing
    listening, a Ray version mismatch: run at once, each must fail with
    exit 2, one `error:` line on stderr and no traceback. (The issue bounds each at 30 s; the
    test prints the seconds each took rather than asserting a wall-clock bound.)"""
    cache = tmp_path_factory.mktemp("cache")
    closed_port = free_port()
    args = ["--methods", "params", "--budget", "smoke", "--dataset", "synthetic"]
    no_token = str(tmp_path / "no-token")
    cases = {
        "no token": ([*args, "--address", heads["token"].address], dict(RAY_AUTH_TOKEN_PATH=no_token),
                     "requires token authentication and this driver has no token"),
        "wrong token": ([*args, "--address", heads["token"].address],
                        dict(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64), "refused this driver's token"),
        "token to an open cluster": ([*args, "--address", heads["open"].address],
                                     dict(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file)),
                                     "set RAY_AUTH_MODE=disabled"),
        "token mode without a token": ([*args, "--address", heads["token"].address],
                                       dict(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=no_token),
                                       "RAY_AUTH_MODE=token but this machine has no Ray token"),
        "nothing listening": ([*args, "--address", f"127.0.0.1:{closed_port}"], {},
                              f"start the head there with `ray start --head --port={closed_port}`"),
    }
    procs = {}
    for i, (name, (argv, env, _)) in enumerate(cases.items()):
        cwd = tmp_path / f"cwd{i}"
        cwd.mkdir()
        procs[name] = (driver([*argv, "--output", str(tmp_path / f"run{i}")], cwd, cache, **env), time.time())
    # A Ray version mismatch: this driver claims another Ray version than the head's.
    mismatch = subprocess.Popen(
        [sys.executable, "-c", "import ray, runpy, sys; ray.__version__ = '2.0.0'; "
         "sys.argv = ['harness.compare'] + sys.argv[1:]; runpy.run_module('harness.compare', run_name='__main__')",
         *args, "--address", heads["open"].address, "--output", str(tmp_path / "run-mismatch")],
        cwd=tmp_path, env=clean_env(PYTHONPATH=str(ROOT), NAS_HARNESS_CACHE=str(cache), RAY_AUTH_TOKEN_PATH=no_token),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs["version mismatch"] = (mismatch, time.time())
    cases["version mismatch"] = ([], {}, "version mismatch with the cluster")
    failures = []
    for name, (proc, t0) in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        # seconds each took, all seven sharing the machine's cores (printed, not asserted: -s shows them)
        print(f"{name}: exit {proc.returncode} after {time.time() - t0:.1f} s")
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        expected = cases[name][2]
        ok = (proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
              and "Traceback" not in stdout + stderr)
        if not ok:
            failures.append(f"{name}: rc={proc.returncode} stderr={stderr[-1500:]!r}")
    assert not failures, "\n".join(failures)
