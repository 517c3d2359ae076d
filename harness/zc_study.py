"""`python -m harness.zc_study`: every zero-cost proxy on a seeded NB201 arch sample, ranked against the benchmark.

In-process (no Ray): samples ``--archs`` of the 15,625 cells with ``random.Random(arch_seed)``
(as ``harness.compare`` does), draws each seed's minibatch from the search train half (the
NB201 25k/25k split of the training set, as ``harness.trial.prepare``; the test set is never
read), computes all proxies per arch with shared passes (``methods.proxies.compute_proxies``)
and the ``az_rank`` aggregate, then ranks every score column against every metric column of
the ground truth. Writes into ``--output``:

* ``scores_seed<k>.csv`` — arch, unique (first of its benchmark class), disconnected, every
  proxy, seconds (that arch's shared computation), az_rank, params, flops (the harness's
  ``flops`` baseline: the benchmark's own counter, pooling included), truth columns;
* ``table.csv`` / ``table.md`` — per score column and metric: mean ± std over seeds of Kendall
  tau, Spearman, precision@top-5%, tau inside the true top 10%, tau on the benchmark-distinct
  archs, a bootstrap 95% interval of tau (first seed), seconds per arch (each proxy alone and all
  proxies with shared passes, both timed on the first ``--time-alone`` archs), the published tau;
* ``study.json`` — the arguments, arch set, data, device, threads, versions and git SHA.

Published taus (all 15,625 archs, CIFAR-10, the authors' code over 5 seeds, as re-run in VKDNW,
CVPR 2025): FLOPs 0.623, jacob_cov 0.616, ZiCo 0.607, NWOT 0.571, SynFlow 0.561, params 0.578,
AZ-NAS 0.712 (shown beside ``az_rank``, which applies AZ-NAS's rule to other proxies).
Exit codes: 0 done, 2 bad input (one ``error:`` line).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from harness.config import UsageError, parse_seeds
from methods.base import Batch
from methods.proxies import (PROXIES, AZRankAggregate, ProxyConfig, compute_proxies, flops_or_zero,
                             images_needed, is_disconnected, log_rank_aggregate)
from spaces.nb201 import Arch, all_archs, count_flops, count_params

AGGREGATE = AZRankAggregate.name
PUBLISHED_TAU = {"flops": 0.623, "jacob_cov": 0.616, "zico": 0.607, "nwot": 0.571, "synflow": 0.561,
                 "params": 0.578, AGGREGATE: 0.712}
PUBLISHED_METRIC = "cifar10_test_acc"
SCORE_COLUMNS = (*PROXIES, AGGREGATE, "params", "flops")
ALL_SHARED = "all_shared"
PROGRESS_EVERY_S = 30.0


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so ``main`` reports one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m harness.zc_study", description=__doc__.splitlines()[0])
    p.add_argument("--archs", type=int, default=1000, help="sample size from the 15,625 cells (default 1000)")
    p.add_argument("--arch-seed", type=int, default=0, help="seed of the arch sample (default 0)")
    p.add_argument("--seeds", default="0", help="proxy seeds (init + minibatch), e.g. 0-2 (default 0)")
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100", "synthetic"))
    p.add_argument("--data-root", help="CIFAR folder or ImageFolder tree / .tar.gz (default: torchvision cache)")
    p.add_argument("--cache-dir", help="decode cache (default ~/.cache/nas-harness)")
    p.add_argument("--no-download", action="store_true", help="never download the dataset")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 25k/25k search split (default 0)")
    p.add_argument("--benchmark", help="ground-truth table (CSV/Parquet/NB201 .pth); without it only scores")
    p.add_argument("--output", required=True, help="directory for the CSVs, table.md and study.json")
    p.add_argument("--C", type=int, default=ProxyConfig.C, help="network width (default 16: the benchmark's)")
    p.add_argument("--N", type=int, default=ProxyConfig.N, help="cells per stage (default 5: the benchmark's)")
    p.add_argument("--batch-size", type=int, default=ProxyConfig.batch_size,
                   help="snip/grad_norm/fisher/jacob_cov batch and each zico batch (default 64)")
    p.add_argument("--nwot-batch-size", type=int, default=ProxyConfig.nwot_batch_size,
                   help="nwot batch (default 128; equal to --batch-size it shares the gradient pass's forward)")
    p.add_argument("--zico-batches", type=int, default=ProxyConfig.zico_batches, help="zico minibatches (default 2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--time-alone", type=int, default=10, help="archs on which each proxy is also timed alone")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of tau (0: none)")
    return p


# --------------------------------------------------------------------------- inputs


def _check_args(args: argparse.Namespace) -> list[int]:
    if not 2 <= args.archs <= 15625:
        raise UsageError(f"--archs must be between 2 and 15625, got {args.archs}")
    if min(args.C, args.N, args.batch_size, args.nwot_batch_size) < 1 or args.zico_batches < 2:
        raise UsageError("--C, --N and the batch sizes must be >= 1, --zico-batches >= 2")
    if min(args.time_alone, args.n_boot, args.threads) < 0:
        raise UsageError("--time-alone, --n-boot and --threads must be >= 0")
    return parse_seeds(args.seeds)


def sample_archs(n: int, arch_seed: int) -> list[Arch]:
    """The same seeded sample ``harness.compare.build_context`` draws."""
    return random.Random(arch_seed).sample(list(all_archs()), n)


def load_truth(path: str | None, archs: Sequence[Arch]) -> pd.DataFrame:
    """Every metric column of the ground truth for ``archs`` (an empty frame without a table)."""
    if path is None:
        return pd.DataFrame(index=range(len(archs)))
    from benchmarks.ground_truth import load_ground_truth

    try:
        gt = load_ground_truth(path)
        strings = [a.to_str() for a in archs]
        return pd.DataFrame({m: gt.values(strings, m) for m in gt.metrics})
    except (ValueError, KeyError, OSError, ImportError) as err:
        raise UsageError(f"--benchmark {path}: {' '.join(str(err).split())}") from None


def make_sample_batch(args: argparse.Namespace, device: torch.device) -> tuple[Callable[[int, int], Batch], int, dict]:
    """``sample_batch(n, seed)`` over the full search train half, as ``harness.trial.prepare`` builds it."""
    from harness.data import DataError, load_dataset, random_batch, search_split

    try:
        data = load_dataset(args.dataset, args.data_root, cache_dir=args.cache_dir, download=not args.no_download)
        train_half, _ = search_split(data.train, seed=args.split_seed, per_class=None)
    except (DataError, OSError) as err:
        raise UsageError(f"data: {' '.join(str(err).split())}") from None

    def sample_batch(n: int, seed: int) -> Batch:
        return random_batch(train_half, n, seed, mean=data.mean, std=data.std, device=device)

    info = {"dataset": data.name, "source": data.source, "train_half": len(train_half), "split_seed": args.split_seed}
    return sample_batch, data.num_classes, info


# --------------------------------------------------------------------------- scoring


def proxy_sizes(args: argparse.Namespace) -> dict[str, int]:
    return {"C": args.C, "N": args.N, "batch_size": args.batch_size, "nwot_batch_size": args.nwot_batch_size,
            "zico_batches": args.zico_batches}


def score_seed(archs: Sequence[Arch], seed: int, batch: Batch | None, num_classes: int, args: argparse.Namespace,
               device: torch.device, log: Callable[[str], None]) -> pd.DataFrame:
    """All proxies of every arch for one seed (shared passes), plus az_rank, params and flops."""
    rows: list[dict[str, Any]] = []
    started = last = time.perf_counter()
    for i, arch in enumerate(archs):
        t0 = time.perf_counter()
        values = compute_proxies(arch, PROXIES, num_classes=num_classes, batch=batch, seed=seed, device=device,
                                 **proxy_sizes(args))
        rows.append({"arch": arch.to_str(), **values, "seconds": time.perf_counter() - t0})
        now = time.perf_counter()
        if now - last >= PROGRESS_EVERY_S or i + 1 == len(archs):
            rate = (now - started) / (i + 1)
            log(f"seed {seed}: {i + 1}/{len(archs)} archs, {rate:.2f} s/arch, "
                f"{rate * (len(archs) - i - 1) / 60:.1f} min left in this seed")
            last = now
    table = pd.DataFrame(rows)
    # az_rank's complexity term (conv FLOPs, 0 for disconnected cells), then the harness's `flops`
    # baseline column (methods.baselines: the benchmark's own counter, pooling included)
    complexity = {"flops": np.array([flops_or_zero(a, args.C, args.N, num_classes) for a in archs])}
    table[AGGREGATE] = log_rank_aggregate({c: complexity[c] if c in complexity else table[c].to_numpy(np.float64)
                                           for c in AZRankAggregate.components})
    table["flops"] = [float(count_flops(a, args.C, args.N, num_classes, pooling=True)) for a in archs]
    table["params"] = [float(count_params(a, args.C, args.N, num_classes)) for a in archs]
    return table


def time_alone(archs: Sequence[Arch], batch: Batch | None, num_classes: int, args: argparse.Namespace,
               device: torch.device) -> dict[str, float]:
    """Seconds per arch of each proxy alone, of az_rank's components and of all proxies (shared).

    All on the same archs, so "alone" and "shared" compare like with like.
    """
    groups: dict[str, tuple[str, ...]] = {p: (p,) for p in PROXIES}
    groups[AGGREGATE] = tuple(c for c in AZRankAggregate.components if c in PROXIES)
    groups[ALL_SHARED] = PROXIES
    out: dict[str, float] = {}
    for name, names in groups.items():
        t0 = time.perf_counter()
        for arch in archs:
            compute_proxies(arch, names, num_classes=num_classes, batch=batch, seed=0, device=device, **proxy_sizes(args))
        out[name] = (time.perf_counter() - t0) / max(len(archs), 1)
    return out


# --------------------------------------------------------------------------- metrics and tables


def unique_mask(archs: Sequence[Arch]) -> list[bool]:
    seen: set[str] = set()
    mask = []
    for a in archs:
        mask.append(a.canonical() not in seen)
        seen.add(a.canonical())
    return mask


def metric_rows(per_seed: Sequence[pd.DataFrame], truth: pd.DataFrame, unique: Sequence[bool], n_boot: int,
                alone_s: dict[str, float]) -> pd.DataFrame:
    """One row per (score column, metric): seed means ± std of the ranking metrics, timing, published tau."""
    from benchmarks.ranking import bootstrap_ci, kendall_tau, ranking_metrics

    keep = np.asarray(unique, dtype=bool)
    rows = []
    for column in SCORE_COLUMNS:
        for metric in truth.columns:
            true = truth[metric].to_numpy(np.float64)
            found = []
            for table in per_seed:
                pred = table[column].to_numpy(np.float64)
                found.append({**ranking_metrics(pred, true), "tau_unique": kendall_tau(pred[keep], true[keep])})
            frame = pd.DataFrame(found)
            row: dict[str, Any] = {"score": column, "metric": metric, "seeds": len(per_seed), "n_archs": len(true)}
            for key in ("kendall_tau", "spearman", "p_at_top5", "tau_top10", "tau_unique"):
                row[key] = float(frame[key].mean())
                row[f"{key}_std"] = float(frame[key].std(ddof=0))
            if n_boot:
                low, high = bootstrap_ci(kendall_tau, per_seed[0][column].to_numpy(np.float64), true, n_boot=n_boot)
                row["tau_ci95_low"], row["tau_ci95_high"] = low, high
            row["s_per_arch_alone"] = alone_s.get(column, 0.0)
            row["s_per_arch_all_shared"] = alone_s.get(ALL_SHARED, 0.0) if column in alone_s else 0.0
            row["published_tau"] = PUBLISHED_TAU.get(column) if metric == PUBLISHED_METRIC else None
            rows.append(row)
    return pd.DataFrame(rows)


def _cell(value: Any, std: Any = None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    return f"{value:.3f}" if std is None else f"{value:.3f} ± {std:.3f}"


def markdown(table: pd.DataFrame, header: str) -> str:
    lines = [header, ""]
    for metric, part in table.groupby("metric", sort=False):
        lines += [f"## {metric}", "",
                  "| score | Kendall tau | Spearman | p@top5% | tau top10% | tau unique | tau 95% CI | "
                  "s/arch alone | s/arch all shared | published tau |", "|" + "---|" * 10]
        for _, r in part.iterrows():
            ci = f"[{r['tau_ci95_low']:.3f}, {r['tau_ci95_high']:.3f}]" if "tau_ci95_low" in r else "—"
            lines.append(f"| {r['score']} | {_cell(r['kendall_tau'], r['kendall_tau_std'])} | "
                         f"{_cell(r['spearman'], r['spearman_std'])} | {_cell(r['p_at_top5'], r['p_at_top5_std'])} | "
                         f"{_cell(r['tau_top10'], r['tau_top10_std'])} | {_cell(r['tau_unique'])} | {ci} | "
                         f"{r['s_per_arch_alone']:.3f} | {r['s_per_arch_all_shared']:.3f} | {_cell(r['published_tau'])} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> Path:
    seeds = _check_args(args)
    from harness.files import device_name, provenance, select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = select_device(args.device)
    except RuntimeError as err:
        raise UsageError(str(err)) from None
    archs = sample_archs(args.archs, args.arch_seed)
    truth = load_truth(args.benchmark, archs)
    sample_batch, num_classes, data_info = make_sample_batch(args, device)
    output = Path(args.output).expanduser().resolve()
    output.mkdir(parents=True, exist_ok=True)
    need = images_needed(PROXIES, args.batch_size, args.nwot_batch_size, args.zico_batches)
    disconnected = [is_disconnected(a) for a in archs]
    log(f"{len(archs)} archs (arch seed {args.arch_seed}, {sum(disconnected)} disconnected), seeds {seeds}, "
        f"{proxy_sizes(args)}, {device_name(device)}, {torch.get_num_threads()} threads -> {output}")
    per_seed = []
    started = time.perf_counter()
    for seed in seeds:
        table = score_seed(archs, seed, sample_batch(need, seed), num_classes, args, device, log)
        table.insert(1, "unique", unique_mask(archs))
        table.insert(2, "disconnected", disconnected)
        pd.concat([table, truth], axis=1).to_csv(output / f"scores_seed{seed}.csv", index=False)
        per_seed.append(table)
    shared_s = float(np.mean([t["seconds"].mean() for t in per_seed]))
    alone_s = time_alone(archs[:args.time_alone], sample_batch(need, seeds[0]), num_classes, args, device)
    study = {"args": vars(args), "seeds": seeds, "arch_set": f"seeded sample of {len(archs)} from the 15,625 cells "
             f"(arch seed {args.arch_seed})", "data": data_info, "device": device_name(device),
             "threads": torch.get_num_threads(), "aggregate_components": list(AZRankAggregate.components),
             "s_per_arch_study": shared_s, "timed_alone_on": len(archs[:args.time_alone]), "s_per_arch_alone": alone_s,
             "wall_s": time.perf_counter() - started, **provenance()}
    (output / "study.json").write_text(json.dumps(study, indent=2, default=str) + "\n")
    if len(truth.columns):
        table = metric_rows(per_seed, truth, unique_mask(archs), args.n_boot, alone_s)
        table.to_csv(output / "table.csv", index=False)
        header = (f"# Zero-cost proxies on NB201: {study['arch_set']}, seeds {seeds}, {proxy_sizes(args)}, "
                  f"{study['device']}, {study['threads']} threads\n\nmean ± std over seeds; published tau: all "
                  "15,625 archs, CIFAR-10 (VKDNW re-run); az_rank is shown beside AZ-NAS's.")
        (output / "table.md").write_text(markdown(table, header) + "\n")
        log(markdown(table[table["metric"] == table["metric"].iloc[0]], ""))
    log(f"done in {(time.perf_counter() - started) / 60:.1f} min: {output}")
    return output


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(build_parser().parse_args(argv))
    except UsageError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
