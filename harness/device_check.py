"""``python -m harness.device_check``: the prepared check of the GPU path, in one command.

    python -m harness.device_check --output DIR                    # on the GPU machine (<= 8 minutes)
    python -m harness.device_check --tiny --device cpu --output DIR  # the same phases, tiny, on a CPU (CI)

Phases (each is timed and recorded; a failing phase is reported and the next one still runs):
  gpu_tests     the ``gpu``-marked tests (tests/test_gpu.py) on the device
  perf          ``python -m harness.perf --device D`` (ratios, absolute times, peak memory; no Ray row)
  spos_paper    SPOS at the paper network size (C=16, N=5, the full 25k/25k split, the published
                recipe) for as many epochs as fit in the time given, then Kendall tau on all 6,466
                unique cells (2,048 calibration + 5,000 validation images each) and the projected
                wall time of the full 250 epochs
  all_ops       seconds per epoch of NAP, P-DARTS and DNAL at that size (timed on a prefix of an epoch)
  sharing       four processes training at once on one device vs one alone: the throughput ratio
                that ``--gpus-per-trial 0.25`` relies on

Everything runs in-process (``harness.trial.prepare``): no Ray, which the GPU machine lacks. Data:
CIFAR-10 from ``--data-root`` (default: ``.device/cifar10-jpg.tar.gz`` in the checkout, else the
shared copy beside it); ground truth: the built-in NAS-Bench-201 table. ``--tiny`` uses synthetic
data and tiny sizes. Writes ``device_check.json`` and ``device_check.md`` under ``--output``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
DATA_CANDIDATES = (ROOT / ".device" / "cifar10-jpg.tar.gz", ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz")
GOALS = {  # the targets on one H100 (C=16, N=5, batch 64)
    "spos_projected_min": ("SPOS paper trial, projected minutes", 10.0, "<="),
    "score_all_unique_min": ("all 6,466 unique cells scored, minutes", 5.0, "<="),
    "sharing_ratio": ("four trials sharing one device / one alone (throughput)", 2.5, ">="),
    "peer_step": ("xautodl supernet step / ours", 1.5, ">="),
}


def log(message: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_phase(record: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    log(f"{name} ...")
    t0 = time.perf_counter()
    try:
        result = fn()
        status = result.pop("status", "ok")
        record[name] = {"status": status, **result}
    except Exception as err:  # one phase failing must not hide the others' figures
        record[name] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    record[name]["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"{name}: {record[name]['status']} in {record[name]['seconds']} s")


# --------------------------------------------------------------------------- phases


def gpu_tests(device: str, tiny: bool, out: Path) -> dict[str, Any]:
    tests = ROOT / "tests" / "test_gpu.py"
    if not tests.exists():
        return {"status": "skipped", "reason": f"{tests} not found (run from a checkout)"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(tests)]
    if tiny:  # the CI run proves the runner works: one trial and the agreement check (the trials of
        cmd += ["-k", "params or agree"]  # every method on the CPU are the rest of the suite)
    env = {**os.environ, "NAS_HARNESS_TEST_DEVICE": device, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    return {"status": "ok" if proc.returncode == 0 else "failed", "summary": lines[-1] if lines else "",
            "returncode": proc.returncode}


def perf(device: str, tiny: bool, out: Path) -> dict[str, Any]:
    path = out / "perf.json"
    cmd = [sys.executable, "-m", "harness.perf", "--device", device, "--skip", "ray", "--output", str(path)]
    if tiny:
        cmd.append("--quick")
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        return {"status": "failed", "error": (proc.stdout + proc.stderr)[-1500:]}
    record = json.loads(path.read_text())
    return {"device": record["device"], "rows": record["rows"], "skipped": record.get("skipped", {}),
            "memory": record.get("memory", {}), "table": proc.stdout.strip().splitlines()[-12:]}


def _experiment(device: str, tiny: bool, data_root: str | None) -> Any:
    from benchmarks.ground_truth import resolve_benchmark
    from harness.config import ExperimentConfig

    if tiny:
        return ExperimentConfig.preset("smoke", dataset="synthetic", device=device, eval_archs="20",
                                       benchmark=resolve_benchmark(None))
    return ExperimentConfig.preset("paper", dataset="cifar10", data_root=data_root, download=False, device=device,
                                   benchmark=resolve_benchmark(None), eval_batch_size=1024)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def spos_paper(device: str, tiny: bool, data_root: str | None, train_s: float, score_s: float) -> dict[str, Any]:
    """SPOS epochs until ``train_s`` is spent, then tau on the unique cells (projected when slow)."""
    import random

    from benchmarks.ground_truth import load_ground_truth
    from benchmarks.ranking import ranking_metrics
    from harness.trial import prepare
    from spaces.nb201 import unique_archs

    exp = _experiment(device, tiny, data_root)
    p = prepare(exp, "spos", seed=0)
    method, cfg = p.method, p.cfg
    epoch_times: list[float] = []
    while not epoch_times or (sum(epoch_times) + epoch_times[-1] <= train_s and len(epoch_times) < cfg.epochs):
        t0 = time.perf_counter()
        metrics = method.train_epoch(p.train_batches, p.valid_batches)
        _sync(device)
        epoch_times.append(time.perf_counter() - t0)
        log(f"spos epoch {len(epoch_times)}: {epoch_times[-1]:.1f} s, train_loss {metrics.get('train_loss', 0):.3f}")
    archs = unique_archs() if not tiny else random.Random(0).sample(unique_archs(), 20)
    # Time a first slice, then score as many as the budget allows (a seeded subset if not all fit).
    t0 = time.perf_counter()
    method.score(archs[:8])  # SPOS keeps the scores of its current weights: these are not scored twice
    _sync(device)
    per_arch = (time.perf_counter() - t0) / 8
    fit = len(archs) if per_arch * len(archs) <= score_s else max(50, int(score_s / per_arch))
    chosen = archs if fit >= len(archs) else random.Random(1).sample(archs, fit)
    new = len(set(chosen) - set(archs[:8]))
    t0 = time.perf_counter()
    scores = method.score(chosen)
    _sync(device)
    per_arch = (time.perf_counter() - t0) / new if new else per_arch
    truth = load_ground_truth(exp.benchmark).values([a.to_str() for a in chosen], "cifar10_test_acc")
    epoch_s = sorted(epoch_times)[len(epoch_times) // 2]
    return {
        "epochs_run": len(epoch_times), "epoch_s": round(epoch_s, 2), "epochs_total": cfg.epochs,
        "train_images_per_epoch": p.train_half, "batch_size": cfg.batch_size,
        "calib_images": exp.calib_images, "valid_images": exp.valid_images,
        "scored_archs": len(chosen), "of_archs": len(archs), "score_s_per_arch": round(per_arch, 4),
        "score_all_unique_min": round(per_arch * len(archs) / 60, 2),
        "spos_projected_min": round((epoch_s * cfg.epochs + per_arch * len(archs)) / 60, 1),
        "ranking_after_epochs": {k: round(float(v), 4) for k, v in ranking_metrics(scores, truth).items()},
    }


def all_ops(device: str, tiny: bool, data_root: str | None, steps: int) -> dict[str, Any]:
    """Seconds per epoch of the all-ops methods, timed on the first ``steps`` batches of an epoch."""
    from harness.trial import prepare

    exp = _experiment(device, tiny, data_root)
    out: dict[str, Any] = {}
    for name in ("nap", "pdarts", "dnal"):
        p = prepare(exp, name, seed=0)
        batches = list(itertools.islice(iter(p.train_batches), steps + 2))
        valid = list(itertools.islice(iter(p.valid_batches), steps + 2))
        p.method.train_epoch(batches[:2], valid[:2])  # warm-up (allocator, kernels)
        _sync(device)
        t0 = time.perf_counter()
        p.method.train_epoch(batches[2:], valid[2:])
        _sync(device)
        per_step = (time.perf_counter() - t0) / steps
        out[name] = {"s_per_step": round(per_step, 4), "epoch_s": round(per_step * len(p.train_batches), 1),
                     "steps_per_epoch": len(p.train_batches)}
    return out


def sharing(device: str, tiny: bool, steps: int) -> dict[str, Any]:
    """Images per second of one training process alone, then of four at once on the same device."""
    def launch(n: int) -> list[float]:
        cmd = [sys.executable, "-m", "harness.device_check", "--worker", "--device", device, "--steps", str(steps)]
        if tiny:
            cmd.append("--tiny")
        procs = [subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
        rates = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"worker failed: {stderr[-800:]}")
            rates.append(json.loads(stdout.strip().splitlines()[-1])["images_per_s"])
        return rates

    alone = launch(1)[0]
    four = launch(4)
    return {"alone_images_per_s": round(alone, 1), "four_images_per_s": [round(r, 1) for r in four],
            "sharing_ratio": round(sum(four) / alone, 2)}


def worker(device: str, tiny: bool, steps: int) -> int:
    """One trial-sized SPOS training loop (C=16, N=5, batch 64; tiny: C=8, N=1); prints images/s."""
    import random

    import torch

    from methods.base import sgd
    from spaces.nb201 import SuperNet, path_plan, random_arch

    if device == "cpu":
        torch.set_num_threads(1)  # four workers on a small CPU: one thread each, as Ray would give
    C, N = (8, 1) if tiny else (16, 5)
    dev = torch.device(device)
    net = SuperNet(C, N).to(dev)
    opt = sgd(net, 0.025, 0.9, 5e-4, nesterov=True)
    x = torch.randn(64, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (64,), device=dev)
    rng = random.Random(0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x, path_plan(random_arch(rng))), y).backward()
        opt.step()

    for _ in range(3):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    print(json.dumps({"images_per_s": steps * 64 / (time.perf_counter() - t0)}))
    return 0


# --------------------------------------------------------------------------- report


def goals(record: dict[str, Any]) -> list[dict[str, Any]]:
    found = {**record.get("spos_paper", {}), **record.get("sharing", {})}
    for row in record.get("perf", {}).get("rows", []):
        found[row["name"]] = row["ratio"]
    out = []
    for key, (what, target, sense) in GOALS.items():
        value = found.get(key)
        held = None if value is None else (value <= target if sense == "<=" else value >= target)
        verdict = "-" if held is None else ("yes" if held else "no")
        out.append({"goal": what, "target": f"{sense} {target}", "value": value,
                    "holds": "n/a (tiny sizes)" if record.get("tiny") else verdict})
    return out


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# Device check — {record['device']}", "",
             f"- date: {record['date']}, commit: {record['commit']}, torch {record['torch']}, tiny: {record['tiny']}",
             f"- total: {record['total_s']} s", "", "| phase | status | seconds | figures |", "|---|---|---|---|"]
    for name in ("gpu_tests", "perf", "spos_paper", "all_ops", "sharing"):
        phase = dict(record.get(name, {}))
        status, seconds = phase.pop("status", "-"), phase.pop("seconds", "-")
        phase.pop("table", None)
        phase.pop("rows", None)
        figures = json.dumps(phase, default=str)[:600].replace("|", "\\|")
        lines.append(f"| {name} | {status} | {seconds} | {figures} |")
    lines += ["", "## Goals", "", "| goal | target | value | holds |", "|---|---|---|---|"]
    lines += [f"| {g['goal']} | {g['target']} | {g['value']} | {g['holds']} |" for g in record["goals"]]
    table = record.get("perf", {}).get("table")
    if table:
        lines += ["", "## harness.perf", "", "```", *table, "```"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.device_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="device_check", help="folder for device_check.json / .md")
    parser.add_argument("--device", default="cuda", help="cuda | cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and synthetic data (the CI run)")
    parser.add_argument("--data-root", default=None, help="CIFAR-10 (default: .device/ or ../shared/data copy)")
    parser.add_argument("--train-s", type=float, default=150.0, help="seconds of SPOS training at paper size")
    parser.add_argument("--score-s", type=float, default=120.0, help="seconds of scoring (a subset beyond)")
    parser.add_argument("--skip", default="", help="comma list of phases to skip")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=150, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    if args.device not in ("cuda", "cpu"):
        print(f"error: --device must be cuda or cpu, got {args.device!r}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU; use --device cpu (with --tiny on a small machine)",
              file=sys.stderr)
        return 2
    if args.worker:
        return worker(args.device, args.tiny, args.steps)
    data_root = args.data_root or next((str(p) for p in DATA_CANDIDATES if p.exists()), None)
    if not args.tiny and data_root is None:
        print("error: no CIFAR-10: pass --data-root, or copy cifar10-jpg.tar.gz to .device/ (or use --tiny)",
              file=sys.stderr)
        return 2
    out = Path(args.output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    from harness.files import device_name, git_sha

    started = time.perf_counter()
    record: dict[str, Any] = {"device": device_name(torch.device(args.device)), "tiny": args.tiny,
                              "date": time.strftime("%Y-%m-%d %H:%M"), "commit": git_sha(),
                              "torch": torch.__version__}
    phases: dict[str, Callable[[], dict[str, Any]]] = {
        "gpu_tests": lambda: gpu_tests(args.device, args.tiny, out),
        "perf": lambda: perf(args.device, args.tiny, out),
        "spos_paper": lambda: spos_paper(args.device, args.tiny, data_root, 1.0 if args.tiny else args.train_s,
                                         5.0 if args.tiny else args.score_s),
        "all_ops": lambda: all_ops(args.device, args.tiny, data_root, 2 if args.tiny else 20),
        "sharing": lambda: sharing(args.device, args.tiny, 3 if args.tiny else args.steps),
    }
    for name, fn in phases.items():
        if name in skip:
            record[name] = {"status": "skipped", "reason": "--skip"}
        else:
            run_phase(record, name, fn)
    record["total_s"] = round(time.perf_counter() - started, 1)
    record["goals"] = goals(record)
    (out / "device_check.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (out / "device_check.md").write_text(markdown(record))
    log(f"wrote {out / 'device_check.json'} and {out / 'device_check.md'}")
    failed = [n for n in phases if record[n]["status"] == "failed"]
    if failed:
        log(f"failed phases: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
