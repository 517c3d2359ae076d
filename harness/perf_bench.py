"""The rows of ``python -m harness.perf``: each a ratio measured side by side in one process.

``Row`` is one line of the table; ``interleaved`` times several functions alternately (so a
drift in machine load hits all alike); ``Bench`` holds the inputs and measures each row.
"""
from __future__ import annotations

import random
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass
class Row:
    name: str
    ratio: float
    target: float | None
    measured: str
    note: str = ""
    at_least: bool = False  # the target is a floor (a speed-up over a peer), not a ceiling

    @property
    def verdict(self) -> str:
        if self.target is None or self.ratio != self.ratio:
            return "report"
        if self.at_least:
            return "ok" if self.ratio >= self.target else "UNDER"
        return "ok" if self.ratio <= self.target else "OVER"

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{'>=' if self.at_least else '<='} {self.target:.2f}"


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

    def _scoring_setup(self, k: int, n_calib: int, n_valid: int, C: int, N: int):
        from spaces.nb201 import SuperNet, random_arch

        torch = self.torch
        rng = random.Random(3)
        archs = [random_arch(rng) for _ in range(k)]
        supernet = SuperNet(C, N).to(self.device)
        g = torch.Generator().manual_seed(3)

        def batches(n: int, bs: int = 256):
            x = torch.randn(n, 3, 32, 32, generator=g).to(self.device)
            y = torch.randint(0, 10, (n,), generator=g).to(self.device)
            return [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]

        return archs, supernet, batches(n_calib), batches(n_valid)

    def fast_scoring(self) -> Row:
        """Scoring as it runs (channels_last on the CPU, box-sum pooling) / the plain path."""
        import copy

        from methods.base import one_shot_scores
        from spaces.nb201 import AvgPool3x3

        torch = self.torch
        # The cpu budget's scoring shape: C=16, N=1, 512 calibration + 1,024 validation images.
        k, n_calib, n_valid, C = (3, 64, 64, 8) if self.quick else (8, 512, 1024, 16)
        archs, supernet, calib, valid = self._scoring_setup(k, n_calib, n_valid, C, 1)
        plain = copy.deepcopy(supernet)
        for module in plain.modules():
            for name, child in list(module.named_children()):
                if isinstance(child, AvgPool3x3):
                    setattr(module, name, torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False))
        plain.memory_format = "contiguous"
        out: dict[str, Any] = {}

        def fast():
            out["fast"] = one_shot_scores(supernet, archs, calib, valid, by="loss")

        def slow():
            out["plain"] = one_shot_scores(plain, archs, calib, valid, by="loss")

        t_fast, t_plain = interleaved([fast, slow], 1 if self.quick else 3, 1, self.sync)
        diff = float(abs(out["fast"] - out["plain"]).max())
        if diff > 1e-4:
            raise AssertionError(f"fast and plain scoring disagree by {diff}")
        return Row("fast_scoring", t_fast / t_plain, 0.5,
                   f"{t_fast / k:.3f} vs {t_plain / k:.3f} s/arch; max |score diff| {diff:.1e}",
                   f"{k} archs, C={C} N=1, {n_calib} calib + {n_valid} valid images")

    def calib_tau(self) -> Row:
        """Does a quarter of the calibration images keep the ranking? tau between the two score vectors."""
        from benchmarks.ranking import kendall_tau
        from methods.base import one_shot_scores
        from spaces.nb201 import path_plan, random_arch

        torch = self.torch
        k, n_calib, steps, C = (6, 128, 5, 8) if self.quick else (50, 2048, 300, 16)
        from harness.data import Batches, normalize, synthetic_dataset

        archs, supernet, _, _ = self._scoring_setup(k, 1, 1, C, 1)
        data = synthetic_dataset(n_train=steps * 64, n_test=10, seed=3)
        train = Batches(data.train.to(self.device), 64, mean=data.mean, std=data.std, seed=3, device=self.device)
        rng = random.Random(4)
        opt = torch.optim.SGD(supernet.parameters(), lr=0.05, momentum=0.9)
        for x, y in train:  # a briefly SPOS-trained supernet: an untrained one ranks at random
            plan = path_plan(random_arch(rng))
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(supernet(x, plan), y).backward()
            opt.step()
        # Held-out images of the same synthetic classes, so the scores mean something.
        held = synthetic_dataset(n_train=n_calib + 1024, n_test=10, seed=5).train.to(self.device)
        xs, ys = normalize(held.images, data.mean, data.std), held.labels
        calib = [(xs[i:i + 256], ys[i:i + 256]) for i in range(0, n_calib, 256)]
        valid = [(xs[i:i + 256], ys[i:i + 256]) for i in range(n_calib, len(xs), 256)]
        full = one_shot_scores(supernet, archs, calib, valid, by="loss")
        few = calib[: max(1, len(calib) // 4)]
        quarter = one_shot_scores(supernet, archs, few, valid, by="loss")
        tau = kendall_tau(full, quarter)
        return Row("calib_tau", tau, None, f"tau {tau:.3f} between {n_calib} and {sum(len(y) for _, y in few)} "
                   "calibration images (batches of 256)", f"{k} archs, supernet SPOS-trained {steps} steps on synthetic data")

    def peer_step(self) -> Row | str:
        """xautodl's NB201 random-sampling supernet (the benchmark's reference code) vs ours, same arch."""
        try:
            from xautodl.models.cell_operations import SearchSpaceNames
            from xautodl.models.cell_searchs.genotypes import Structure
            from xautodl.models.cell_searchs.search_model_random import TinyNetworkRANDOM
        except ImportError as err:
            return f"xautodl not installed ({err}); pip install --no-deps xautodl"
        from spaces.nb201 import SuperNet, path_plan, random_arch

        ratios, details = [], []
        rng = random.Random(5)
        ours = SuperNet(self.C, self.N).to(self.device)
        theirs = TinyNetworkRANDOM(self.C, self.N, 4, 10, SearchSpaceNames["nas-bench-201"], False, True).to(self.device)
        for _ in range(1 if self.quick else 4):
            arch = random_arch(rng)
            plan = path_plan(arch)
            theirs.arch_cache = Structure.str2structure(arch.to_str())
            t_theirs, t_ours = interleaved(
                [self._step_fn(theirs, lambda x: theirs(x)[1]), self._step_fn(ours, lambda x: ours(x, plan))],
                self.repeats, self.warmup, self.sync)
            ratios.append(t_theirs / t_ours)
            details.append(f"{t_theirs * 1e3:.1f}/{t_ours * 1e3:.1f} ms")
        return Row("peer_step", statistics.median(ratios), 1.5, "; ".join(details),
                   f"xautodl TinyNetworkRANDOM step / ours, {len(ratios)} random archs, C={self.C} N={self.N} "
                   f"batch {self.batch}", at_least=True)

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

