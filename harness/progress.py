"""One progress line per trial epoch, failure and completion (Tune's own table is switched off)."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator, Sequence, Sized


def line_printer(name: str, width: int = 18) -> Callable[[str], None]:
    """``say(text)`` printing ``[  12.3s] name  text`` (a trial's own progress lines; under Ray
    they reach the driver through ``log_to_driver``)."""
    start = time.time()

    def say(text: str) -> None:
        print(f"[{time.time() - start:7.1f}s] {name:<{width}} {text}", flush=True)

    return say


def ticking(items: Iterable[Any], say: Callable[[str], None], what: str, every_s: float = 30.0,
            clock: Callable[[], float] = time.monotonic) -> Iterator[Any]:
    """``items`` unchanged, with a ``what: k/n (t s)`` line through ``say`` at most (and, while
    items keep coming, at least) once per ``every_s`` seconds: long epochs say they are alive."""
    total = len(items) if isinstance(items, Sized) else None
    start = last = clock()
    for k, item in enumerate(items, start=1):
        yield item
        now = clock()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total is not None else ""
            say(f"{what}: {k}{of} batches ({now - start:.0f} s)")


def epoch_line(result: dict[str, Any], keys: Sequence[str]) -> str:
    """``epoch 3/15 train_loss 1.234 ... (12.3s)`` from a reported result."""
    parts = [f"epoch {result.get('epoch')}/{result.get('epochs')}"]
    parts += [f"{key} {result[key]:.3f}" for key in keys if isinstance(result.get(key), (int, float))]
    if isinstance(result.get("epoch_s"), (int, float)):
        parts.append(f"({result['epoch_s']:.1f}s)")
    return " ".join(parts)


def progress_callback(name_of: Callable[[dict], str], done_line: Callable[[dict], str],
                      keys: Sequence[str], width: int = 18):
    """A Tune ``Callback`` printing progress; built lazily so importers need not import ray."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self) -> None:
            self.t0 = time.time()

        def _line(self, trial, text: str) -> None:
            print(f"[{time.time() - self.t0:7.1f}s] {name_of(trial.config):<{width}} {text}", flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._line(trial, done_line(result) if result.get("done") else epoch_line(result, keys))

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "FAILED (see the summary)")

    return Progress()
