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
    total = 0

    def conv_hook(module: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += (module.in_channels // module.groups) * kh * kw * out.shape[1] * out.shape[2] * out.shape[3]

    def linear_hook(module: nn.Linear, _inp: Any, _out: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    try:
        model.eval()
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)
