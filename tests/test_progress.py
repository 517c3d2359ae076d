"""Progress lines from long method phases (issue #13): the rate-limited ``Ticker``, and its use in
one-shot scoring, HOPNAS's pruning events, SPOS's evolution and every method's training epoch.
Methods never print: they call ``SearchSetup.progress``; without one nothing changes."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

import methods.base as base
from methods.base import SearchSetup, Ticker, as_ticker, one_shot_scores
from methods.dnal import DNAL, DNALConfig
from methods.hopnas import HOPNAS, HOPNASConfig
from methods.nap import NAP, NAPConfig
from methods.pdarts import PDARTS, PDARTSConfig
from methods.spos import SPOS, SPOSConfig
import spaces.nb201 as nb201
from spaces.nb201 import SuperNet, random_arch
from helpers import random_batches

CPU = torch.device("cpu")


class FakeClock:
    """A clock that advances ``step`` seconds on every read (one read per tick)."""

    def __init__(self, step: float, start: float = 1000.0):
        self.step, self.now, self.reads = step, start, 0

    def __call__(self) -> float:
        self.now += self.step
        self.reads += 1
        return self.now


@pytest.fixture(autouse=True)
def _fresh_pool_cache():
    """Isolation from a separate bug: ``spaces.nb201._neighbour_count`` is an ``lru_cache``; when an
    image size is first seen under ``torch.inference_mode`` (one-shot scoring) the cached tensor is an
    inference tensor and later training at that size fails. Start and leave every test with it empty."""
    nb201._neighbour_count.cache_clear()
    yield
    nb201._neighbour_count.cache_clear()


@pytest.fixture
def clock31(monkeypatch) -> FakeClock:
    """Every read of the methods' progress clock is 31 s after the previous one."""
    clock = FakeClock(31.0)
    monkeypatch.setattr(base, "progress_clock", clock)
    return clock


def batches(n: int, size: int = 8, res: int = 8, seed: int = 0):
    return random_batches(n, size=size, res=res, seed=seed)


# --------------------------------------------------------------------------- the ticker


@pytest.mark.parametrize("steps", ["regular", "irregular"])
def test_ticker_reports_at_most_and_at_least_once_per_interval(steps):
    rng = random.Random(0)
    now = [0.0]
    lines: list[tuple[float, str]] = []
    t = Ticker(lambda s: lines.append((now[0], s)), "work", 500, "steps", every_s=30.0, clock=lambda: now[0])
    gaps = []
    for i in range(500):
        dt = 7.0 if steps == "regular" else rng.uniform(0.0, 12.0)
        gaps.append(dt)
        now[0] += dt
        t.tick(i + 1)
    stamps = [0.0] + [when for when, _ in lines]  # the start counts as the last report
    between = np.diff(stamps)
    assert len(lines) >= 10 and t.lines == len(lines)
    assert (between >= 30.0).all()                  # at most one line per 30 s
    assert (between <= 30.0 + max(gaps)).all()       # at least one per 30 s (plus one step)
    assert now[0] - stamps[-1] < 30.0                # and none owed at the end
    when, text = lines[0]
    assert text.startswith("work: ") and text.endswith(f"steps ({when:.1f} s)")


def test_ticker_line_format_children_share_the_rate_limit_and_none_reads_no_clock():
    now = [100.0]
    lines: list[str] = []
    t = Ticker(lines.append, "scoring", 1000, "archs", clock=lambda: now[0])
    now[0] += 12.34
    assert not t.tick(340)                            # under 30 s: nothing
    now[0] += 20.0
    assert t.tick(340) and lines == ["scoring: 340/1000 archs (32.3 s)"]
    now[0] += 31.0
    assert t.tick(341, "edge 3 of 6") and lines[-1] == "scoring: 341/1000 archs, edge 3 of 6 (63.3 s)"
    assert Ticker(lines.append, "x", clock=lambda: 0.0).line(None, "just a note", 5.0) == "x: just a note (5.0 s)"
    assert Ticker(lines.append, "x", None, "batches", clock=lambda: 0.0).line(7, "", 5.0) == "x: 7 batches (5.0 s)"
    # a nested phase: its own label and start, the parent's rate limit
    child = t.child("inner", 5, "evaluations")
    now[0] += 10.0
    assert not child.tick(1)                          # parent reported 10 s ago
    now[0] += 20.0
    assert child.tick(2) and lines[-1] == "inner: 2/5 evaluations (30.0 s)"
    now[0] += 15.0
    assert not t.tick(400)                            # the child's line counts for the parent too
    assert as_ticker(t, "scoring").progress is t.progress and as_ticker(None, "x").progress is None

    def no_clock() -> float:
        raise AssertionError("progress=None must not read the clock")

    quiet = Ticker(None, "quiet", 3, clock=no_clock)
    assert not any(quiet.tick(i) for i in range(3)) and quiet.lines == 0
    with pytest.raises(ValueError):
        Ticker(lines.append, "x", every_s=0.0)


# --------------------------------------------------------------------------- one-shot scoring


def test_one_shot_scores_report_every_arch_when_each_takes_over_30_s_and_none_changes_nothing(clock31):
    torch.manual_seed(0)
    net = SuperNet(8, 1)
    rng = random.Random(1)
    archs = [random_arch(rng) for _ in range(5)]
    calib, valid = batches(2, seed=3), batches(2, seed=4)
    quiet = one_shot_scores(net, archs, calib, valid, by="loss")
    assert clock31.reads == 0                          # no callback: the clock is never read
    lines: list[str] = []
    loud = one_shot_scores(net, archs, calib, valid, by="loss", progress=lines.append)
    np.testing.assert_array_equal(quiet, loud)
    assert lines == [f"one-shot scoring: {i}/5 archs ({31.0 * i:.1f} s)" for i in range(1, 6)]


def test_one_shot_scores_stay_quiet_when_fast(monkeypatch):
    monkeypatch.setattr(base, "progress_clock", FakeClock(1.0))
    torch.manual_seed(0)
    net = SuperNet(8, 1)
    rng = random.Random(2)
    lines: list[str] = []
    one_shot_scores(net, [random_arch(rng) for _ in range(40)], batches(1, seed=3), batches(1, seed=4),
                    progress=lines.append)
    assert lines == ["one-shot scoring: 30/40 archs (30.0 s)"]  # 40 s of scoring: one line, at 30 s


# --------------------------------------------------------------------------- HOPNAS


def make_hopnas(progress=None, **changes) -> HOPNAS:
    cfg = dataclasses.replace(HOPNASConfig.preset("smoke"), **changes)
    setup = SearchSetup(C=8, N=1, num_classes=10, device=CPU, seed=0, calib=batches(1, seed=101),
                        valid=batches(1, seed=202), progress=progress)
    torch.manual_seed(0)
    return HOPNAS(cfg, setup)


def test_hopnas_pruning_event_reports_each_importance_evaluation(clock31):
    lines: list[str] = []
    m = make_hopnas(lines.append)
    record = m.prune_event()
    assert record is not None and record["node"] == 1 and record["phase"] == "ops"
    what = "HOPNAS pruning event 1 (ops of node 1)"
    assert lines[0] == f"{what}: 1/5 evaluations, unmasked supernet (31.0 s)"
    assert [line.split(",")[0] for line in lines] == [f"{what}: {k}/5 evaluations" for k in range(1, 6)]
    assert all("masked 1<-0 " in line for line in lines[1:])
    # node 2 has two edges: 2 x 4 candidates + the unmasked evaluation
    m.prune_event(), m.prune_event(), m.prune_event()
    lines.clear()
    m.prune_event()
    assert len(lines) == 9 and lines[-1].startswith("HOPNAS pruning event 5 (ops of node 2): 9/9 evaluations")


def test_hopnas_pruning_epoch_reports_batches_and_events(clock31):
    lines: list[str] = []
    m = make_hopnas(lines.append, epochs=2, warmup_frac=0.5)  # event 1 at the end of epoch 1, 2-12 in epoch 2
    train = batches(3, seed=7)
    m.train_epoch(train, [])
    assert lines[:2] == [f"HOPNAS epoch 1: {i}/3 batches, 0/12 prune events done ({31.0 * i:.1f} s)" for i in (1, 2)]
    assert [line.split(",")[0] for line in lines[2:7]] == [
        f"HOPNAS pruning event 1 (ops of node 1): {k}/5 evaluations" for k in range(1, 6)]
    assert len(lines) == 8 and lines[7].startswith("HOPNAS epoch 1: 3/3 batches, 1/12 prune events done (")
    lines.clear()
    m.train_epoch(train, [])
    events = {line.split(":")[0] for line in lines if line.startswith("HOPNAS pruning event")}
    assert events == {f"HOPNAS pruning event {t} (ops of node {(t - 1) // 4 + 1})" for t in range(2, 13)}
    assert lines[-1].startswith("HOPNAS epoch 2: 3/3 batches, 12/12 prune events done")


def test_hopnas_progress_changes_nothing(clock31):
    lines: list[str] = []
    runs = []
    for progress in (None, lines.append):
        m = make_hopnas(progress, epochs=2, warmup_frac=0.5, score_by="oneshot_loss")
        for ep in range(2):
            m.train_epoch(batches(3, seed=ep), [])
        rng = random.Random(5)
        runs.append((m.score([random_arch(rng) for _ in range(6)]), m.elim.clone(), m.importance.clone(), m.derive()))
    assert lines
    (s0, e0, i0, d0), (s1, e1, i1, d1) = runs
    np.testing.assert_array_equal(s0, s1)
    assert torch.equal(e0, e1) and torch.equal(i0.nan_to_num(-7.0), i1.nan_to_num(-7.0)) and d0 == d1


# --------------------------------------------------------------------------- SPOS, NAP, P-DARTS, DNAL


def test_spos_evolution_reports_generations_and_progress_changes_nothing(clock31):
    lines: list[str] = []
    derived = []
    for progress in (None, lines.append):
        torch.manual_seed(0)
        cfg = SPOSConfig.preset("smoke")  # 2 generations
        m = SPOS(cfg, SearchSetup(8, 1, 10, CPU, 0, batches(1, seed=10), batches(1, seed=11), progress=progress))
        m.train_epoch(batches(2, seed=1), [])
        derived.append((m.derive(), m.score([random_arch(random.Random(3)) for _ in range(3)])))
    assert derived[0][0] == derived[1][0]
    np.testing.assert_array_equal(derived[0][1], derived[1][1])
    assert "SPOS epoch 1: 1/2 batches (31.0 s)" in lines
    gens = [line for line in lines if line.startswith("SPOS evolution")]
    assert [g.split(",")[0] for g in gens] == ["SPOS evolution: 1/2 generations", "SPOS evolution: 2/2 generations"]
    assert any(line.startswith("one-shot scoring: ") for line in lines)  # the scoring inside the evolution


def test_every_training_epoch_reports_its_batches(clock31):
    lines: list[str] = []
    train, valid = batches(2, seed=1), batches(2, seed=2)
    setup = SearchSetup(C=8, N=1, num_classes=10, device=CPU, seed=0, calib=batches(1, seed=3),
                        valid=batches(1, seed=4), progress=lines.append)
    torch.manual_seed(0)
    nap = NAP(NAPConfig.preset("smoke"), setup)
    nap.train_epoch(train, valid)
    nap.train_epoch(train, valid)
    assert lines[:2] == ["NAP epoch 1 (warm-up): 1/2 batches (31.0 s)", "NAP epoch 1 (warm-up): 2/2 batches (62.0 s)"]
    assert lines[2].startswith("NAP epoch 2: 1/2 batches")
    lines.clear()
    pdarts = PDARTS(PDARTSConfig.preset("smoke"), setup)
    pdarts.train_epoch(train, valid)
    assert lines == ["P-DARTS stage 1 epoch 1: 1/2 batches (31.0 s)", "P-DARTS stage 1 epoch 1: 2/2 batches (62.0 s)"]
    lines.clear()
    dnal = DNAL(DNALConfig.preset("smoke"), setup)  # 1 weight epoch, 2 arch epochs
    for _ in range(2):
        dnal.train_epoch(train, valid)
    assert [line.split(" (")[0] for line in lines] == [
        "DNAL weight epoch 1: 1/2 batches", "DNAL weight epoch 1: 2/2 batches",
        "DNAL arch epoch 1: 1/2 batches", "DNAL arch epoch 1: 2/2 batches"]


def test_search_setup_progress_defaults_to_none():
    setup = SearchSetup(C=8, N=1, num_classes=10, device=CPU, seed=0)
    assert setup.progress is None


def test_ticking_passes_items_through_and_says_so_every_interval():
    from harness.progress import ticking

    times = iter(float(t) for t in range(0, 1000, 10))  # 10 s per item
    lines: list[str] = []
    items = list(range(12))
    out = list(ticking(items, lines.append, "epoch 3", every_s=30.0, clock=lambda: next(times)))
    assert out == items  # unchanged, in order
    assert lines == ["epoch 3: 3/12 batches (30 s)", "epoch 3: 6/12 batches (60 s)",
                     "epoch 3: 9/12 batches (90 s)", "epoch 3: 12/12 batches (120 s)"]
