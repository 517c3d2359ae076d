"""`python -m harness.compare` end to end through Ray Tune (tiny budgets), and its bad-input errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def compare(*args: str, cache: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "NAS_HARNESS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "harness.compare", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.smoke
def test_smoke_compare_on_synthetic_data(tmp_path, cache):
    out = tmp_path / "run"
    proc = compare("--methods", "spos,params,random", "--seeds", "0,1", "--budget", "smoke",
                   "--dataset", "synthetic", "--output", str(out), cache=cache)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = pd.read_csv(out / "summary.csv")
    # the built-in ground truth ranks every trial, and the three baselines join whatever was asked
    assert len(summary) == 8 and set(summary["status"]) == {"ok"}
    assert sorted(zip(summary["method"], summary["seed"])) == sorted(
        (m, s) for m in ("spos", "params", "flops", "random") for s in (0, 1))
    assert summary["kendall_tau"].notna().all() and summary["derived_arch"].str.startswith("|").all()
    kinds = dict(zip(summary["method"], summary["kind"]))
    assert kinds == {"spos": "method", "params": "baseline", "flops": "baseline", "random": "baseline"}
    report = (out / "report.md").read_text()
    assert "benchmarks/data/nb201_test_acc_200ep.parquet (cifar10_test_acc)" in report
    assert "| spos | method | 2/2 ok |" in report and "| params | baseline | 2/2 ok |" in report
    assert "## Against the `params` baseline" in report and "beats_params" in report
    assert (out / "tau_per_method.png").stat().st_size > 1000
    assert "spos-seed0" in proc.stdout and "epoch 2/2" in proc.stdout  # progress lines

    # the report rebuilds from the run directory alone
    (out / "summary.csv").unlink()
    rebuilt = subprocess.run([sys.executable, "-m", "harness.report", str(out)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert len(pd.read_csv(out / "summary.csv")) == 8
    table = subprocess.run([sys.executable, "-m", "harness.report", str(out), "--table"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert table.stdout.startswith("| method | kind | trials | kendall_tau") and "| spos | method | 2/2 ok |" in table.stdout


@pytest.mark.smoke
def test_benchmark_none_ranks_nothing_and_says_so(tmp_path, cache):
    out = tmp_path / "run"
    proc = compare("--methods", "spos", "--budget", "smoke", "--dataset", "synthetic", "--benchmark", "none",
                   "--output", str(out), cache=cache)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--benchmark none: no ground truth" in proc.stdout
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["method"]) == ["spos"] and summary["kendall_tau"].isna().all()  # no baselines either
    assert "No ranking metrics" in (out / "report.md").read_text()
    assert not (out / "tau_per_method.png").exists()


@pytest.mark.smoke
@pytest.mark.realdata
def test_real_data_smoke_ranks_against_nas_bench_201(tmp_path, cache, cifar10_tgz, nb201_csv):
    out = tmp_path / "run"
    methods = "spos,hopnas,nap,dnal,pdarts,params,random"
    proc = compare("--methods", methods, "--seeds", "0", "--budget", "smoke", "--dataset", "cifar10",
                   "--data-root", str(cifar10_tgz), "--benchmark", str(nb201_csv), "--eval-archs", "100",
                   "--output", str(out), cache=cache)
    summary = pd.read_csv(out / "summary.csv") if (out / "summary.csv").exists() else None
    assert proc.returncode == 0, (summary.to_string() if summary is not None else "") + proc.stderr[-3000:]
    assert set(summary["status"]) == {"ok"} and len(summary) == 8  # flops joins as a baseline
    assert summary["kendall_tau"].notna().all() and summary["kendall_tau"].between(-1, 1).all()
    params = summary.set_index("method").loc["params"]
    assert abs(params["kendall_tau"] - 0.58) < 0.15, params["kendall_tau"]
    assert (summary["n_archs"] == 100).all() and summary["derived_truth"].notna().all()
    for png in ("tau_per_method.png", "score_vs_truth.png"):
        assert (out / png).stat().st_size > 1000


@pytest.mark.smoke
def test_a_failing_trial_is_reported_while_its_siblings_finish(tmp_path, cache):
    out = tmp_path / "run"
    proc = compare("--methods", "spos,hopnas,nap,dnal,pdarts,params", "--seeds", "0", "--budget", "smoke",
                   "--dataset", "synthetic", "--set", "spos.lr=nan", "--benchmark", "none", "--output", str(out),
                   cache=cache)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert summary.loc["spos", "status"] == "failed"
    assert "NonFiniteLossError: non-finite loss" in summary.loc["spos", "error"]
    others = summary.drop(index="spos")
    assert set(others["status"]) == {"ok"}, others[["status", "error"]]
    assert "did not succeed" in proc.stdout


@pytest.mark.smoke
def test_resume_continues_an_interrupted_run(tmp_path, cache):
    """Kill a run after its first checkpoint; --resume finishes it without repeating epochs."""
    out = tmp_path / "run"
    env = {**os.environ, "NAS_HARNESS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "harness.compare", "--methods", "spos", "--seeds", "0", "--budget", "smoke",
            "--dataset", "synthetic", "--epochs", "6", "--set", "spos.lr=0.0125", "--benchmark", "none",
            "--output", str(out)]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    history = out / "trials" / "spos-seed0" / "history.csv"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if history.exists() and len(history.read_text().splitlines()) >= 3:  # header + 2 epochs
                break
            if proc.poll() is not None:
                pytest.fail("run ended before it could be interrupted:\n" + proc.stdout.read()[-3000:])
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint within 240 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    done_before = len(pd.read_csv(history))
    assert done_before < 6 and not (out / "trials" / "spos-seed0" / "result.json").exists()

    resumed = compare("--output", str(out), "--resume", cache=cache)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    epochs = list(pd.read_csv(history)["epoch"])
    assert epochs == [1, 2, 3, 4, 5, 6], epochs  # each epoch once: nothing repeated, nothing lost
    assert pd.read_csv(out / "summary.csv")["status"].tolist() == ["ok"]
    # the resumed trial ran the configs resolved when the run was planned (stored in run.json),
    # override included: nothing is re-resolved from the current presets
    stored = json.loads((out / "run.json").read_text())["method_configs"]["spos"]
    ran = json.loads((out / "trials" / "spos-seed0" / "config.json").read_text())["method_config"]
    assert ran == stored and ran["lr"] == 0.0125 and ran["epochs"] == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "spos,darts9000"], "unknown method 'darts9000'; registered methods:"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'; datasets: cifar10, cifar100, synthetic"),
        (["--dataset", "cifar10", "--data-root", "/nonexistent/cifar", "--no-download"], "--data-root"),
        (["--seeds", "3-1"], "--seeds must look like"),
        (["--budget", "huge"], "unknown budget 'huge'"),
        (["--eval-archs", "lots"], "--eval-archs must be"),
        (["--set", "spos.lrr=1"], "unknown SPOSConfig field 'lrr'"),
        (["--resume", "--output", "/nonexistent/run"], "nothing to resume"),
        (["--gpus-per-trial", "1"], "--gpus-per-trial 1 but the Ray cluster has 0 GPUs"),
        (["--methods", "spos,pdarts", "--N", "2"], "--N does not apply to pdarts"),
        (["--benchmark", "/nonexistent/nb201.csv"], "cannot load benchmark /nonexistent/nb201.csv"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(tmp_path, cache, monkeypatch, capsys, args, message):
    from harness.compare import main

    if "--gpus-per-trial" in args and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("NAS_HARNESS_CACHE", str(cache))
    base = ["--methods", "spos", "--dataset", "synthetic", "--output", str(tmp_path / "run")]
    code = main([*base, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "run" / "tune").exists()  # nothing started


def test_a_benchmark_of_another_space_or_missing_archs_exits_2(tmp_path, cache, monkeypatch, capsys):
    from harness.compare import main

    monkeypatch.setenv("NAS_HARNESS_CACHE", str(cache))
    table = tmp_path / "other.csv"
    table.write_text("arch,cifar10_test_acc\nresnet18,93.0\nresnet34,94.0\n")
    partial = tmp_path / "partial.csv"
    partial.write_text("arch,cifar10_test_acc\n|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,10.0\n"
                       "|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|,11.0\n")
    for path, message in ((table, "NB201"), (partial, "lacks")):
        code = main(["--methods", "params", "--dataset", "synthetic", "--benchmark", str(path),
                     "--output", str(tmp_path / path.stem)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.smoke
def test_retrain_top_trains_the_derived_archs_in_the_same_run(tmp_path, cache):
    out = tmp_path / "run"
    proc = compare("--methods", "params,random", "--seeds", "0", "--budget", "smoke", "--dataset", "synthetic",
                   "--benchmark", "none", "--retrain-top", "1", "--retrain-epochs", "1", "--output", str(out), cache=cache)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    evaluation = pd.read_csv(out / "evaluation.csv")
    # each trial's derived arch plus its best-scored arch (params: the same all-conv3x3 cell, deduplicated)
    assert set(evaluation["status"]) == {"ok"} and 2 <= len(evaluation) <= 4
    assert evaluation["test_top1"].between(0, 100).all() and (evaluation["epochs"] == 1).all()
    assert "## Evaluation" in (out / "report.md").read_text()
