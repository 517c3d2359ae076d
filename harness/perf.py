"""``python -m harness.perf``: what the harness costs on top of the raw network, as ratios.

Each ratio is measured side by side in one process (median of repeats, warm-up excluded), so
it means the same on any machine; absolute times are printed too, with the device named.

    python -m harness.perf                 # CPU, full sizes (minutes)
    python -m harness.perf --device cuda   # on a GPU
    python -m harness.perf --quick         # tiny sizes, proves the script runs (CI)

Ratios and targets:
  spos_step          SPOS supernet step on a sampled path / standalone Network step     <= 1.15
  all_ops_step       all-ops weighted step (NAP/P-DARTS/DNAL) / sum of the 5 one-op cell steps  (reported)
  scoring            one-shot scoring of K archs / bare forward passes over the same images  <= 1.20
  fast_scoring       one-shot scoring as it runs / the plain path (NCHW, library pooling)  <= 0.50
                     (the same scores are asserted)
  calib_tau          Kendall tau between one-shot scores with all vs. a quarter of the
                     calibration images, on a briefly trained supernet (reported; not a time)
  data               producing an augmented batch / the training step it feeds           <= 0.05
  peer_step          xautodl's NB201 random-sampling supernet step / ours, same arch     >= 1.5
                     (skipped with a reason when xautodl is not installed)
  ray                a SPOS trial through harness.compare / the same trial in-process    <= 1.10 (+ start-up)
and the peak memory of the all-ops supernet's training step.

It lives in ``harness/`` because it times spaces/, methods/ and harness/ alike: its imports
point down, and ``benchmarks/`` stays a leaf.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from harness.files import device_name
from harness.perf_bench import Bench, Row


def ray_overhead(quick: bool, data_root: str | None) -> Row:
    """A SPOS trial through harness.compare (Ray) vs the same trial function in-process."""
    from harness.compare import build_context
    from harness.config import ExperimentConfig
    from harness.trial import LocalSession, run_trial, trial_config
    import torch

    budget = "smoke" if quick else "cpu"
    common = dict(epochs=1 if quick else 3, eval_archs="10" if quick else "50")
    dataset = "cifar10" if data_root else "synthetic"
    with tempfile.TemporaryDirectory() as tmp:
        exp = ExperimentConfig.preset(budget, dataset=dataset, data_root=data_root, download=False, **common)
        context = build_context(exp, Path(tmp) / "inproc")
        t0 = time.perf_counter()
        run_trial(trial_config(exp, "spos", 0), context, LocalSession())
        t_inproc = time.perf_counter() - t0

        out = Path(tmp) / "ray"
        # Ray gives a trial as many torch threads as CPUs (OMP_NUM_THREADS): ask for the threads
        # the in-process run used, or the ratio measures thread count instead of Ray.
        threads = torch.get_num_threads()
        args: list[str] = [
                sys.executable, "-m", "harness.compare", "--methods", "spos", "--seeds", "0", "--budget", budget,
                "--dataset", dataset, "--no-download", "--epochs", str(common["epochs"]),
                "--eval-archs", str(common["eval_archs"]), "--cpus-per-trial", str(threads), "--output", str(out)]
        if data_root:
            args += ["--data-root", data_root]
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True)
        t_total = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"harness.compare failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        result = json.loads((out / "trials" / "spos-seed0" / "result.json").read_text())
    t_trial = result["total_s"]
    return Row("ray", t_trial / t_inproc, 1.10,
               f"trial {t_trial:.1f} s in Ray vs {t_inproc:.1f} s in-process; start-up {t_total - t_trial:.1f} s",
               f"{budget} budget SPOS, {common['epochs']} epochs, {dataset}, {threads} threads both; "
               "start-up = process, Ray init, shutdown")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: proves the script runs")
    parser.add_argument("--output", default="perf.json", help="where to write the table as JSON")
    parser.add_argument("--data-root", default=None, help="CIFAR-10 for the Ray row (default: synthetic data)")
    parser.add_argument("--skip", default="", help="comma list of rows to skip (e.g. ray)")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    bench = Bench(args.device, args.quick)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    for name in ("spos_step", "all_ops_step", "scoring", "fast_scoring", "calib_tau", "data", "peer_step"):
        if name not in skip:
            row = getattr(bench, name)()
            if isinstance(row, str):
                skipped[name] = row
                print(f"  skipped {name}: {row}", file=sys.stderr, flush=True)
            else:
                rows.append(row)
                print(f"  measured {name}", file=sys.stderr, flush=True)
    if "ray" not in skip:
        rows.append(ray_overhead(args.quick, args.data_root))
    memory = bench.memory() if "memory" not in skip else {}
    device = device_name(torch.device(args.device))

    print(f"\nharness.perf on {device}{' (quick)' if args.quick else ''}, torch {torch.__version__}")
    print(f"{'ratio':<14}{'value':>8}{'target':>9}  {'verdict':<8}measured")
    for r in rows:
        print(f"{r.name:<14}{r.ratio:>8.3f}{r.target_text:>9}  {r.verdict:<8}{r.measured}  [{r.note}]")
    for name, why in skipped.items():
        print(f"{name:<14}skipped: {why}")
    if memory:
        print(f"all-ops supernet C={bench.C} N={bench.N} batch {bench.batch}: peak memory "
              f"{memory['peak_bytes'] / 2**20:.0f} MiB ({memory['how']})")
    record = {"device": device, "quick": args.quick, "torch": torch.__version__,
              "rows": [{**asdict(r), "verdict": r.verdict} for r in rows], "skipped": skipped,
              "memory": memory}
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
