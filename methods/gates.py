"""The scaled-sigmoid channel gate of DNAL (Guo et al., Pattern Recognition 2022), reusable on any CNN.

A ``ScaledSigmoidGate(C)`` holds one learnable α per channel (initialised to 0) and multiplies a
feature map by ``sigmoid(δ·α)`` per channel. It has three modes:

* ``'bypass'`` — the gate is the identity (the weight-training phase);
* ``'soft'``   — ``x · sigmoid(δ·α)``, differentiable in α (the architecture phase; δ grows by
  continuation so the gates are pushed to 0/1);
* ``'hard'``   — ``x · [sigmoid(δ·α) > threshold]`` (default threshold 0.9; the fine-tune phase
  and the binarised result).

The sparsity penalty is ``Σ sigmoid(α)`` — on the UNSCALED α, not on ``sigmoid(δ·α)`` (with δ up
to 10⁴ a penalty on the scaled sigmoid would have no useful gradient). A gate with
``num_channels=1`` is a scalar gate (shape ``(1, 1, 1, 1)`` broadcasts over any channel count).

Nothing here knows about a search space: a channel search on a ResNet or MobileNet places one
gate after the BN of each prunable layer and drives ``set_mode`` / ``set_delta`` /
``total_penalty`` over the whole model. ``mode``, ``delta`` and ``threshold`` travel in the
module's ``state_dict`` (as extra state), so a checkpoint restores them.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

GATE_MODES = ("bypass", "soft", "hard")


class ScaledSigmoidGate(nn.Module):
    """One α per channel; gate value ``sigmoid(δ·α)`` of shape ``(1, C, 1, 1)``."""

    def __init__(self, num_channels: int, threshold: float = 0.9, delta: float = 1.0, mode: str = "bypass"):
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"a gate needs num_channels >= 1, got {num_channels}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"the binarisation threshold is a probability in (0, 1), got {threshold}")
        self.num_channels = int(num_channels)
        self.alpha = nn.Parameter(torch.zeros(num_channels))
        self.threshold = float(threshold)
        self.delta = 1.0
        self.mode = "bypass"
        self.set_delta(delta)
        self.set_mode(mode)

    # -- configuration
    def set_mode(self, mode: str) -> None:
        if mode not in GATE_MODES:
            raise ValueError(f"gate mode must be one of {GATE_MODES}, got {mode!r}")
        self.mode = mode

    def set_delta(self, delta: float) -> None:
        delta = float(delta)
        if not delta > 0.0:
            raise ValueError(f"the sigmoid scale delta must be > 0, got {delta}")
        self.delta = delta

    def reset(self, value: float = 0.0) -> None:
        """Set every α to ``value`` (DNAL starts the architecture phase from α = 0)."""
        with torch.no_grad():
            self.alpha.fill_(value)

    # -- values
    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, self.num_channels, 1, 1)

    def probs(self, delta: float | None = None) -> torch.Tensor:
        """``sigmoid(δ·α)`` per channel, flat ``(C,)``; ``delta`` defaults to the gate's current δ."""
        d = self.delta if delta is None else float(delta)
        return torch.sigmoid(d * self.alpha)

    def value(self, delta: float | None = None) -> torch.Tensor:
        """The soft gate ``sigmoid(δ·α)`` shaped ``(1, C, 1, 1)`` (differentiable in α)."""
        return self._shape(self.probs(delta))

    def kept(self, delta: float | None = None) -> torch.Tensor:
        """Bool ``(C,)``: channels with ``sigmoid(δ·α) > threshold`` (strictly greater)."""
        return self.probs(delta).detach() > self.threshold

    def mask(self, delta: float | None = None) -> torch.Tensor:
        """The hard 0/1 gate shaped ``(1, C, 1, 1)`` (no gradient)."""
        return self._shape(self.kept(delta).to(self.alpha.dtype))

    def kept_fraction(self, delta: float | None = None) -> float:
        return float(self.kept(delta).float().mean())

    def coef(self) -> torch.Tensor | None:
        """The multiplier of the current mode: ``None`` (bypass), soft value, or hard mask."""
        if self.mode == "bypass":
            return None
        if self.mode == "soft":
            return self.value()
        return self.mask()

    def penalty(self) -> torch.Tensor:
        """``Σ sigmoid(α)`` over channels — UNSCALED (δ does not enter)."""
        return torch.sigmoid(self.alpha).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.coef()
        return x if c is None else x * c

    # -- checkpointing of the non-tensor state
    def get_extra_state(self) -> Any:
        return {"mode": self.mode, "delta": self.delta, "threshold": self.threshold}

    def set_extra_state(self, state: Any) -> None:
        self.set_mode(state["mode"])
        self.set_delta(state["delta"])
        self.threshold = float(state["threshold"])

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, mode={self.mode}, delta={self.delta:g}, threshold={self.threshold}"


# --------------------------------------------------------------------------- whole-model helpers


def gates_of(model: nn.Module) -> Iterator[ScaledSigmoidGate]:
    return (m for m in model.modules() if isinstance(m, ScaledSigmoidGate))


def set_mode(model: nn.Module, mode: str) -> None:
    for g in gates_of(model):
        g.set_mode(mode)


def set_delta(model: nn.Module, delta: float) -> None:
    for g in gates_of(model):
        g.set_delta(delta)


def total_penalty(model: nn.Module) -> torch.Tensor:
    """``Σ_gates Σ_channels sigmoid(α)`` (multiply by λ for the loss)."""
    terms = [g.penalty() for g in gates_of(model)]
    if not terms:
        raise ValueError("the model has no ScaledSigmoidGate: nothing to penalise")
    return torch.stack(terms).sum()


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [g.alpha for g in gates_of(model)]


def continuation_delta(step: int, steps: int, delta_start: float = 1.0, delta_end: float = 1e4) -> float:
    """δ after ``step`` of ``steps`` geometric continuation steps from ``delta_start`` to ``delta_end``.

    ``δ_k = delta_start · (delta_end / delta_start) ** (k / steps)``: each step multiplies δ by
    ``(delta_end / delta_start) ** (1 / steps)`` (10^0.4 for 1 → 10⁴ in 10 steps), ``δ_0`` is
    ``delta_start`` and ``δ_steps`` is ``delta_end`` exactly. Computed in closed form, not by
    repeated multiplication, so resumed runs see the same floats.
    """
    if steps < 1:
        raise ValueError(f"continuation needs steps >= 1, got {steps}")
    if not 0 <= step <= steps:
        raise ValueError(f"continuation step must be in [0, {steps}], got {step}")
    if step == steps:
        return float(delta_end)
    return float(delta_start * (delta_end / delta_start) ** (step / steps))
