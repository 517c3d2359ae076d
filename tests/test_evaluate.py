"""harness.evaluate: the evaluation trial in-process (artifacts, resume), search-run plumbing,
the report section, `python -m harness.evaluate` end to end through Ray, and its bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks.train import recipe
from harness import evaluate as ev
from harness.config import UsageError
from harness.evaluate import archs_from_run
from harness.evaluation_report import refresh_run_report
from harness.evaluation_trial import EvalContext, EvalJob, eval_trial_name, run_evaluation_trial
from harness.tables import upsert_report_section
from harness.trial import LocalSession, TrialInterrupted

ROOT = Path(__file__).resolve().parents[1]
A = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
B = "|avg_pool_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|skip_connect~2|"
C = "|nor_conv_1x1~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|none~1|nor_conv_3x3~2|"


def _config(arch: str = A, seed: int = 0, epochs: int = 3, **job) -> dict:
    r = recipe("nb201", epochs=epochs, C=4, N=1, batch_size=40)
    j = EvalJob(dataset="synthetic", synthetic_train=200, synthetic_test=100, threads=1, **job)
    return {"arch": arch, "seed": seed, "job": j.to_dict(), "recipe": r.to_dict()}


def test_trial_names_are_short_unique_and_folder_safe():
    assert eval_trial_name(A, 3) == "nb201-3_3p_s3s-seed3"
    assert eval_trial_name(B, 0) == "nb201-p_xs_xxs-seed0"


def test_an_evaluation_trial_writes_its_artifacts(tmp_path):
    context = EvalContext(output=str(tmp_path), truth={A: 93.5}, metric="cifar10_test_acc")
    session = LocalSession()
    final = run_evaluation_trial(_config(epochs=2), context, session)
    trial = tmp_path / "evaluation" / eval_trial_name(A, 0)
    assert json.loads((trial / "result.json").read_text())["test_top1"] == final["test_top1"]
    config = json.loads((trial / "config.json").read_text())
    assert config["recipe"]["epochs"] == 2 and config["params"] == final["params"] > 0
    assert config["device"].startswith("cpu") and config["bf16_autocast"] is False and config["truth"] == 93.5
    assert list(pd.read_csv(trial / "history.csv")["epoch"]) == [1, 2]
    assert [r["epoch"] for r in session.results] == [1, 2, 2] and session.results[-1]["done"]
    assert final["truth"] == 93.5 and 0 <= final["test_top1"] <= final["test_top5"] <= 100
    assert final["flops"] > 0 and final["train_images"] == 200 and final["test_images"] == 100


def test_an_evaluation_trial_stopped_after_epoch_k_resumes_to_the_same_metrics(tmp_path):
    straight = run_evaluation_trial(_config(seed=1), EvalContext(output=str(tmp_path / "a")), LocalSession())

    context = EvalContext(output=str(tmp_path / "b"))
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrialInterrupted):
        run_evaluation_trial(_config(seed=1), context, LocalSession(ckpt, stop_after_epoch=2))
    history = tmp_path / "b" / "evaluation" / eval_trial_name(A, 1) / "history.csv"
    assert list(pd.read_csv(history)["epoch"]) == [1, 2]
    torch.manual_seed(12345)  # the global RNG state of the resuming process must not matter
    session = LocalSession(ckpt)
    resumed = run_evaluation_trial(_config(seed=1), context, session)
    assert [r["epoch"] for r in session.results] == [3, 3]  # no finished epoch repeated
    for key in ("test_top1", "test_top5", "test_loss", "train_loss"):
        assert resumed[key] == straight[key], key  # bit for bit
    assert list(pd.read_csv(history)["epoch"]) == [1, 2, 3]


def test_a_failing_trial_leaves_its_reason(tmp_path):
    config = _config()
    config["recipe"]["lr"] = 1e30
    with pytest.raises(FloatingPointError):
        run_evaluation_trial(config, EvalContext(output=str(tmp_path)), LocalSession())
    error = (tmp_path / "evaluation" / eval_trial_name(A, 0) / "error.txt").read_text()
    assert "non-finite training loss" in error


def test_an_imagenet_trial_streams_an_imagefolder_tree(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(6):
        pattern = np.kron(rng.uniform(0, 255, (4, 4, 3)), np.ones((16, 16, 1)))
        for split, n in (("train", 6), ("val", 2)):
            (tmp_path / "tree" / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(pattern + rng.normal(0, 20, pattern.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "tree" / split / f"c{c}" / f"{i}.png")
    r = recipe("imagenet", epochs=1, C=4, N=1, batch_size=12, eval_batch_size=12, image_size=32, resize=40,
               workers=0)
    job = EvalJob(dataset="imagenet", data_root=str(tmp_path / "tree"), threads=1)
    final = run_evaluation_trial({"arch": A, "seed": 0, "job": job.to_dict(), "recipe": r.to_dict()},
                                 EvalContext(output=str(tmp_path / "out")), LocalSession())
    assert final["train_images"] == 36 and final["test_images"] == 12 and final["recipe"] == "imagenet"
    assert 0 <= final["test_top1"] <= final["test_top5"] <= 100


# --------------------------------------------------------------------------- search-run plumbing


def _fake_run(run_dir: Path, benchmark: Path | None = None) -> Path:
    """A finished harness.compare run on synthetic data: two trials, their derived archs and scores."""
    for name, derived, scores in (("spos-seed0", A, {A: 0.9, B: 0.1, C: 0.5}),
                                  ("nap-seed0", B, {A: 0.2, B: 0.3, C: 0.8})):
        trial = run_dir / "trials" / name
        trial.mkdir(parents=True)
        (trial / "derived.json").write_text(json.dumps({"arch": derived}))
        pd.DataFrame({"arch": list(scores), "score": list(scores.values())}).to_csv(trial / "scores.csv", index=False)
    experiment = {"dataset": "synthetic", "synthetic_train": 200, "synthetic_test": 100, "device": "cpu"}
    (run_dir / "run.json").write_text(json.dumps({"experiment": experiment,
                                                  "benchmark": str(benchmark) if benchmark else None}))
    (run_dir / "report.md").write_text("# NAS harness run: x\n\n## Per method\n\n| a |\n|---|\n")
    return run_dir


def _benchmark(tmp_path: Path) -> Path:
    path = tmp_path / "truth.csv"
    path.write_text(f"arch,cifar10_test_acc\n{A},93.0\n{B},60.0\n{C},88.0\n")
    return path


def test_archs_from_a_run_are_the_derived_ones_plus_the_top_k_scored(tmp_path):
    run = _fake_run(tmp_path / "run")
    assert archs_from_run(run) == {B: "nap-seed0 derived", A: "spos-seed0 derived"}
    top = archs_from_run(run, top_k=1)
    assert list(top) == [B, C, A]  # deduplicated, in trial order
    assert top[C] == "nap-seed0 top-1" and top[A] == "spos-seed0 derived; spos-seed0 top-1"
    with pytest.raises(UsageError, match="no trials/ folder"):
        archs_from_run(tmp_path)


def test_the_report_section_is_replaced_not_duplicated(tmp_path):
    report = tmp_path / "report.md"
    report.write_text("# run\n\n## Per method\n\ntable\n\n## Per trial\n\nrows\n")
    upsert_report_section(report, "## Evaluation\n\nfirst\n")
    upsert_report_section(report, "## Evaluation\n\nsecond\n")
    text = report.read_text()
    assert text.count("## Evaluation") == 1 and "second" in text and "first" not in text
    assert text.index("## Per trial") < text.index("## Evaluation")
    # an evaluation section in the middle keeps what follows it
    report.write_text("# run\n\n## Evaluation\n\nold\n\n## Per trial\n\nrows\n")
    upsert_report_section(report, "## Evaluation\n\nnew\n")
    assert report.read_text() == "# run\n\n## Evaluation\n\nnew\n\n## Per trial\n\nrows\n"
    (tmp_path / "evaluation.md").write_text("## Evaluation\n\nnew\n")
    report.write_text("# rebuilt by harness.report\n")
    assert refresh_run_report(tmp_path) and "new" in report.read_text()


def test_retrain_after_search_evaluates_the_picked_archs_into_the_run(tmp_path, monkeypatch):
    """The compare.py hook, with the Tune call replaced by in-process trials (Ray is tested below)."""
    run = _fake_run(tmp_path / "run", _benchmark(tmp_path))
    calls = {}

    def in_process(plan, resources, resume=False):
        calls.update(resources=resources, resume=resume)
        for arch, seed in plan.expected():
            config = {"arch": arch, "seed": seed, "job": plan.job.to_dict(), "recipe": plan.recipe.to_dict()}
            run_evaluation_trial(config, plan.context, LocalSession())
        return {}

    monkeypatch.setattr(ev, "run_plan", in_process)
    with pytest.raises(UsageError, match="--retrain-top must be >= 0"):
        ev.retrain_after_search(run, top_k=-1, epochs=1)
    frame = ev.retrain_after_search(run, top_k=1, epochs=1, recipe_overrides={"C": 4, "N": 1, "batch_size": 50})
    assert list(frame["arch"]) == [B, C, A] and set(frame["status"]) == {"ok"}
    assert list(frame["truth"]) == [60.0, 88.0, 93.0] and (frame["epochs"] == 1).all()
    assert (frame["dataset"] == "synthetic").all() and (frame["train_images"] == 200).all()
    assert pd.read_csv(run / "evaluation.csv")["arch"].tolist() == [B, C, A]
    report = (run / "report.md").read_text()
    assert report.count("## Evaluation") == 1 and "## Per method" in report and "Kendall tau" in report
    assert calls["resume"] is False and json.loads((run / "evaluate.json").read_text())["recipe"]["C"] == 4


# --------------------------------------------------------------------------- the CLI


def evaluate(*args: str, cache: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "NAS_HARNESS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "harness.evaluate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.smoke
def test_evaluate_cli_trains_two_archs_through_ray_and_reports_into_the_run(tmp_path):
    run = _fake_run(tmp_path / "run", _benchmark(tmp_path))
    proc = evaluate("--from", str(run), "--epochs", "1", "--C", "4", "--N", "1", "--batch-size", "50",
                    cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    frame = pd.read_csv(run / "evaluation.csv")
    assert list(frame.columns[:10]) == ["arch", "seed", "dataset", "epochs", "test_top1", "test_top5", "params",
                                        "flops", "truth", "wall_s"]
    assert sorted(frame["arch"]) == sorted([A, B]) and set(frame["status"]) == {"ok"}
    assert frame["test_top1"].between(0, 100).all() and (frame["params"] > 0).all()
    assert dict(zip(frame["arch"], frame["truth"])) == {A: 93.0, B: 60.0}  # the run's benchmark
    assert "nb201-3_3p_s3s-seed0" in proc.stdout and "epoch 1/1" in proc.stdout  # progress lines
    report = (run / "report.md").read_text()
    assert report.count("## Evaluation") == 1 and "## Per method" in report
    assert (run / "evaluation.md").read_text().startswith("## Evaluation")
    for name in (eval_trial_name(A, 0), eval_trial_name(B, 0)):
        assert (run / "evaluation" / name / "result.json").exists()


def _no_traceback_one_line(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "|nor_conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "--dataset", "synthetic"],
         "is not an NB201 cell: unknown op 'nor_conv_5x5'"),
        (["--arch", A, "--dataset", "imagenet", "--recipe", "nb201", "--data-root", "/tmp"],
         "recipe 'nb201' trains on cifar10, cifar100, synthetic, not 'imagenet'; use --recipe imagenet"),
        (["--arch", A, "--dataset", "cifar10", "--recipe", "imagenet"],
         "recipe 'imagenet' trains on imagenet, not 'cifar10'; use --recipe nb201"),
        (["--arch", A, "--dataset", "imagenet", "--data-root", "{tmp}"], "has no train/ and no val/ folder"),
    ],
    ids=["arch-outside-space", "imagenet-with-nb201", "cifar10-with-imagenet", "imagenet-root-without-splits"],
)
def test_bad_input_exits_2_with_one_clear_line(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = evaluate(*args, "--output", str(tmp_path / "out"), cache=tmp_path / "cache")
    _no_traceback_one_line(proc, message)
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no architecture to evaluate"),
        (["--arch", A, "--epochs", "many"], "argument --epochs: invalid int value"),
        (["--arch", A, "--set", "lrr=1"], "unknown recipe field 'lrr'"),
        (["--arch", A, "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--arch", A, "--top-k", "2"], "--top-k needs --from RUN_DIR"),
        (["--from", "/nonexistent/run"], "no such directory"),
        (["--resume", "--output", "/nonexistent/run"], "nothing to resume"),
        (["--arch", A, "--set", "image_size=64", "--set", "resize=64"], "does not match the data's 32x32"),
        (["--arch", A, "--dataset", "synthetic", "--gpus-per-trial", "1"], "the Ray cluster has 0 GPUs"),
    ],
)
def test_more_bad_input_in_process(tmp_path, capsys, args, message):
    if "--gpus-per-trial" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    extra = [] if "--dataset" in args else ["--dataset", "synthetic"]
    code = ev.main([*args, *extra, "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
