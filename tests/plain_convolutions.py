"""The check behind every AtrousConv2d test of a whole network: the same network with plain nn.Conv2d
convolutions (every tap computed) gives the same logits and gradients."""
from __future__ import annotations

import copy

import torch
from torch import nn

from common.atrous import AtrousConv2d


def with_plain_convolutions(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose AtrousConv2d modules are plain nn.Conv2d with the same weights, and how many."""
    plain = copy.deepcopy(model)
    swapped = [m for m in plain.modules() if isinstance(m, AtrousConv2d)]
    for module in swapped:
        module.__class__ = nn.Conv2d
    return plain, len(swapped)


def logits_and_gradients(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``net(x)`` and the gradient of its squared sum for every parameter, flattened into one vector; the same
    dropout masks on every call."""
    torch.manual_seed(1)
    logits = net(x)
    grads = torch.autograd.grad(logits.square().sum(), list(net.parameters()))
    return logits, torch.cat([g.flatten() for g in grads])
