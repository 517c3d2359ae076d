"""Sizes measured on a built network, the one convention every space and recipe reports.

``deployed_params``: parameters of the network as deployed (a DARTS auxiliary head, used in
training only, is excluded, as the DARTS repositories count). ``conv_linear_macs``:
multiply-accumulates of one image's forward pass through convolutions and linear layers (BN,
pooling, activations and additions ignored — the convention of ``spaces.nb201.count_flops`` and
of the multiply-add counts papers compare with), measured with forward hooks so it holds for
any stem or space.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

AUXILIARY = "auxiliary_head."


def deployed_params(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(AUXILIARY))


@torch.no_grad()
def conv_linear_macs(model: nn.Module, image_size: int, device: torch.device | str | None = None) -> int:
    was_training = model.training
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    try:
        model.eval()
        with MacMeter() as meter:
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return int(meter.forward)

class MacMeter:
    """Counts the multiply-adds of every convolution and linear layer that runs while it is active
    (any model: a global forward hook), split into forward passes and the backward passes they
    imply.

    ``forward``: the conv/linear multiply-adds of every forward call, the batch included, with the
    convention of ``conv_linear_macs``. ``backward``: twice the forward multiply-adds of every call
    whose output is part of an autograd graph (``out.requires_grad``): a backward pass computes
    the input gradient and the weight gradient, each as costly as the forward. ``total`` is the
    sum — the compute a training step processes, whatever the method (one path, all ops,
    architecture steps, the evaluations a pruning rule runs). Not thread-safe across models run
    concurrently in one process.
    """

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0
        self._handle: Any = None

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def _hook(self, module: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs = (module.in_channels // module.groups) * kh * kw * out.numel()
        elif isinstance(module, nn.Linear):
            macs = module.in_features * out.numel()
        else:
            return
        self.forward += int(macs)
        if out.requires_grad:
            self.backward += 2 * int(macs)

    def __enter__(self) -> "MacMeter":
        self._handle = nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
