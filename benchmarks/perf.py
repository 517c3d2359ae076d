"""``python -m benchmarks.perf``: what the harness costs on top of the raw network, as ratios.

Each ratio is measured side by side in one process (median of repeats, warm-up excluded), so
it means the same on any machine; absolute times are printed too, with the device named.

    python -m benchmarks.perf                 # CPU, full sizes (minutes)
    python -m benchmarks.perf --device cuda   # on a GPU
    python -m benchmarks.perf --quick         # tiny sizes, proves the script runs (CI)

Ratios and targets:
  spos_step          SPOS supernet step on a sampled path / standalone Network step     <= 1.15
  all_ops_step       all-ops weighted step (NAP/P-DARTS/DNAL) / sum of the 5 one-op cell steps  (reported)
  scoring            one-shot scoring of K archs / bare forward passes over the same images  <= 1.20
  data               producing an augmented batch / the training step it feeds           <= 0.05
  ray                a SPOS trial through harness.compare / the same trial in-process    <= 1.10 (+ start-up)
and the peak memory of the all-ops supernet's training step.

This is a tool at the top of the dependency graph (it times spaces/, methods/ and harness/);
nothing imports it, so ``benchmarks/`` stays a leaf for library code.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence


@dataclass
class Row:
    name: str
    ratio: float
    target: float | None
    measured: str
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "report"
        return "ok" if self.ratio <= self.target else "OVER"


def median_time(fn: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: Sequence[Callable[[], Any]], repeats: int, warmup: int, sync) -> list[float]:
    """Median time of each fn, measured alternately so drifts in machine load hit all alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


class Bench:
    def __init__(self, device: str, quick: bool):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.quick = quick
        self.C, self.N = (8, 1) if quick else (16, 5)
        self.batch = 16 if quick else (256 if self.device.type == "cuda" else 64)
        self.repeats, self.warmup = (2, 1) if quick else (7, 2)
        self.sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(self.batch, 3, 32, 32, generator=g).to(self.device)
        self.y = torch.randint(0, 10, (self.batch,), generator=g).to(self.device)

    # -- helpers
    def _step_fn(self, model, forward):
        from methods.base import sgd

        torch = self.torch
        opt = sgd(model, 0.01, 0.9, 5e-4, nesterov=True)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(forward(self.x), self.y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()

        return step

    # -- the ratios
    def spos_step(self) -> Row:
        from spaces.nb201 import Network, SuperNet, path_plan, random_arch

        rng = random.Random(0)
        supernet = SuperNet(self.C, self.N).to(self.device)
        ratios, details = [], []
        for _ in range(1 if self.quick else 4):
            arch = random_arch(rng)
            net = Network(arch, self.C, self.N).to(self.device)
            plan = path_plan(arch)
            t_super, t_net = interleaved(
                [self._step_fn(supernet, lambda x: supernet(x, plan)), self._step_fn(net, net)],
                self.repeats, self.warmup, self.sync)
            ratios.append(t_super / t_net)
            details.append(f"{t_super * 1e3:.1f}/{t_net * 1e3:.1f} ms")
        return Row("spos_step", statistics.median(ratios), 1.15, "; ".join(details),
                   f"{len(ratios)} random paths, C={self.C} N={self.N} batch {self.batch}")

    def all_ops_step(self) -> Row:
        from spaces.nb201 import OPS, Arch, Network, SuperNet, weighted_plan

        torch = self.torch
        supernet = SuperNet(self.C, self.N).to(self.device)
        alpha = torch.zeros(6, len(OPS), device=self.device, requires_grad=True)
        weighted = self._step_fn(supernet, lambda x: supernet(x, weighted_plan(torch.softmax(alpha, -1))))
        singles = [self._step_fn(net, net) for net in
                   (Network(Arch((op,) * 6), self.C, self.N).to(self.device) for op in OPS)]
        times = interleaved([weighted, *singles], self.repeats, self.warmup, self.sync)
        return Row("all_ops_step", times[0] / sum(times[1:]), None,
                   f"{times[0] * 1e3:.1f} ms vs {sum(times[1:]) * 1e3:.1f} ms",
                   "softmax-weighted sum of all ops / the 5 one-op networks' steps")

    def scoring(self) -> Row:
        from methods.base import one_shot_scores
        from spaces.nb201 import SuperNet, path_plan, random_arch

        torch = self.torch
        rng = random.Random(1)
        k = 5 if self.quick else 100
        archs = [random_arch(rng) for _ in range(k)]
        supernet = SuperNet(self.C, self.N).to(self.device)
        g = torch.Generator().manual_seed(1)
        n_batches, bs = (2, 32) if self.quick else (1, 256)  # per arch: one calibration + one validation batch
        calib = [(torch.randn(bs, 3, 32, 32, generator=g).to(self.device),
                  torch.randint(0, 10, (bs,), generator=g).to(self.device)) for _ in range(n_batches)]
        valid = [(torch.randn(bs, 3, 32, 32, generator=g).to(self.device),
                  torch.randint(0, 10, (bs,), generator=g).to(self.device)) for _ in range(n_batches)]

        def scored():
            one_shot_scores(supernet, archs, calib, valid)

        @torch.inference_mode()
        def bare():
            for arch in archs:
                plan = path_plan(arch)
                for x, _ in calib + valid:
                    supernet(x, plan)

        t_scored, t_bare = interleaved([scored, bare], 1 if not self.quick else 2, 1 if self.quick else 0, self.sync)
        return Row("scoring", t_scored / t_bare, 1.2, f"{t_scored:.2f} s vs {t_bare:.2f} s",
                   f"{k} archs, {2 * n_batches} batches of {bs} each")

    def data(self) -> Row:
        from harness.data import Batches, synthetic_dataset
        from spaces.nb201 import SuperNet, path_plan, random_arch

        data = synthetic_dataset(n_train=2000 if self.quick else 25_000, n_test=10, seed=0)
        batches = Batches(data.train.to(self.device), self.batch, mean=data.mean, std=data.std,
                          seed=0, device=self.device)
        n = len(batches)

        def epoch_of_batches():
            for _ in batches:
                pass

        t_epoch = median_time(epoch_of_batches, max(1, self.repeats // 3), 1, self.sync)
        supernet = SuperNet(self.C, self.N).to(self.device)
        plan = path_plan(random_arch(random.Random(2)))
        t_step = median_time(self._step_fn(supernet, lambda x: supernet(x, plan)), self.repeats, self.warmup, self.sync)
        per_batch = t_epoch / n
        return Row("data", per_batch / t_step, 0.05, f"{per_batch * 1e3:.2f} ms/batch vs {t_step * 1e3:.1f} ms/step",
                   f"augmented batch of {self.batch} (crop+flip+normalise) from uint8 on {self.device.type}")

    def memory(self) -> dict[str, Any]:
        from spaces.nb201 import OPS, SuperNet, weighted_plan

        torch = self.torch
        supernet = SuperNet(self.C, self.N).to(self.device)
        alpha = torch.zeros(6, len(OPS), device=self.device, requires_grad=True)
        step = self._step_fn(supernet, lambda x: supernet(x, weighted_plan(torch.softmax(alpha, -1))))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step()
            self.sync()
            return {"peak_bytes": torch.cuda.max_memory_allocated(), "how": "torch.cuda.max_memory_allocated"}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"peak_bytes": after, "growth_bytes": after - before,
                "how": "process max RSS after one all-ops step (upper bound; includes Python and torch)"}


def ray_overhead(quick: bool, data_root: str | None) -> Row:
    """A SPOS trial through harness.compare (Ray) vs the same trial function in-process."""
    from harness.compare import build_context
    from harness.config import ExperimentConfig
    from harness.trial import LocalSession, run_trial
    import torch

    budget = "smoke" if quick else "cpu"
    common = dict(epochs=1 if quick else 3, eval_archs="10" if quick else "50")
    dataset = "cifar10" if data_root else "synthetic"
    with tempfile.TemporaryDirectory() as tmp:
        exp = ExperimentConfig.preset(budget, dataset=dataset, data_root=data_root, download=False, **common)
        context = build_context(exp, Path(tmp) / "inproc")
        t0 = time.perf_counter()
        run_trial({"method": "spos", "seed": 0, "experiment": exp.to_dict(), "overrides": {}}, context, LocalSession())
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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__.split("\n\n")[0])
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
    for name in ("spos_step", "all_ops_step", "scoring", "data"):
        if name not in skip:
            rows.append(getattr(bench, name)())
            print(f"  measured {name}", file=sys.stderr, flush=True)
    if "ray" not in skip:
        rows.append(ray_overhead(args.quick, args.data_root))
    memory = bench.memory() if "memory" not in skip else {}
    device = torch.cuda.get_device_name() if args.device == "cuda" else \
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"

    print(f"\nbenchmarks.perf on {device}{' (quick)' if args.quick else ''}, torch {torch.__version__}")
    print(f"{'ratio':<14}{'value':>8}{'target':>9}  {'verdict':<8}measured")
    for r in rows:
        target = f"<= {r.target:.2f}" if r.target is not None else "-"
        print(f"{r.name:<14}{r.ratio:>8.3f}{target:>9}  {r.verdict:<8}{r.measured}  [{r.note}]")
    if memory:
        print(f"all-ops supernet C={bench.C} N={bench.N} batch {bench.batch}: peak memory "
              f"{memory['peak_bytes'] / 2**20:.0f} MiB ({memory['how']})")
    record = {"device": device, "quick": args.quick, "torch": torch.__version__,
              "rows": [{**asdict(r), "verdict": r.verdict} for r in rows], "memory": memory}
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
