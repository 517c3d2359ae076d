"""One progress line per trial epoch, failure and completion (Tune's own table is switched off)."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence


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
