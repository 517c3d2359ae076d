"""`python -m harness.compare` end to end through Ray Tune (tiny budgets), and its bad-input errors."""
from __future__ import annotations

import os
import subprocess
import sys
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
    header = table.stdout.splitlines()[0]
    assert header.startswith("| method | trials | kendall_tau [95% CI] |") and header.endswith("| beats params |")
    assert "| spos | 2/2 ok |" in table.stdout and "## Headline" in report
    assert summary.loc[summary["method"] == "spos", "search_macs"].gt(0).all()  # the compute each trial spent


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


def _bad_benchmarks(folder: Path) -> dict[str, tuple[Path, str]]:
    """Damaged ground-truth files a user might pass, each with the words its error must contain."""
    from benchmarks.ground_truth import BUILTIN_NB201

    good = pd.read_parquet(BUILTIN_NB201)
    files: dict[str, tuple[Path, str]] = {}
    dup = pd.concat([good, good.iloc[:3]])
    files["duplicate archs"] = (folder / "dup.csv", "3 duplicate arch(s)")
    dup.to_csv(files["duplicate archs"][0], index=False)
    nan = good.copy()
    nan.loc[::2, "cifar10_test_acc"] = float("nan")
    files["NaN values"] = (folder / "nan.csv", "have no cifar10_test_acc value")
    nan.to_csv(files["NaN values"][0], index=False)
    files["missing metric column"] = (folder / "nometric.csv", "no metric for 'cifar10'")
    good.drop(columns=["cifar10_test_acc"]).to_csv(files["missing metric column"][0], index=False)
    other = good.copy()
    other["arch"] = [f"Genotype(normal=[('sep_conv_3x3', {i})])" for i in range(len(good))]
    files["archs of another space"] = (folder / "other.csv", "malformed arch string")
    other.to_csv(files["archs of another space"][0], index=False)
    files["not parquet"] = (folder / "garbage.parquet", "could not read")
    files["not parquet"][0].write_bytes(b"PAR1 but not really")
    return files


def test_bad_ground_truth_files_exit_2_with_one_line_each(tmp_path, cache, monkeypatch, capsys):
    from harness.compare import main

    monkeypatch.setenv("NAS_HARNESS_CACHE", str(cache))
    for case, (path, message) in _bad_benchmarks(tmp_path).items():
        code = main(["--methods", "params", "--dataset", "synthetic", "--budget", "smoke", "--benchmark", str(path),
                     "--output", str(tmp_path / f"run-{path.stem}")])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (case, err)


def test_an_unreadable_benchmark_pickle_says_it_unpickles_and_exits_2(tmp_path, cache, monkeypatch, capsys):
    from harness.compare import main

    monkeypatch.setenv("NAS_HARNESS_CACHE", str(cache))
    broken = tmp_path / "NAS-Bench-201-broken.pth"
    broken.write_bytes(b"\x80\x04not a pickle")
    code = main(["--methods", "params", "--dataset", "synthetic", "--budget", "smoke", "--benchmark", str(broken),
                 "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert [ln for ln in err.splitlines() if ln.startswith("note: ")][0].startswith(f"note: unpickling {broken}")
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "is not a readable NAS-Bench-201 file" in errors[0], err


def test_a_corrupted_dataset_archive_exits_2_with_one_line(tmp_path, cache, monkeypatch, capsys):
    import io
    import tarfile

    from harness.compare import main

    monkeypatch.setenv("NAS_HARNESS_CACHE", str(cache))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:  # a real ImageFolder archive, then cut short
        for i in range(40):
            data = bytes(range(256)) * 40
            info = tarfile.TarInfo(f"cifar10/train/cls{i % 2}/img{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not an archive at all" * 50)
    for archive in (cut, garbage):
        code = main(["--methods", "params", "--dataset", "cifar10", "--budget", "smoke", "--data-root", str(archive),
                     "--no-download", "--benchmark", "none", "--output", str(tmp_path / f"run-{archive.stem}")])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: cannot read archive {archive}"), err


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
