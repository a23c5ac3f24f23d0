"""A user-defined mixer for the plug-in test: a causal running mean, registered by import path from config."""

import torch
from torch import nn


class CausalMean(nn.Module):
    def __init__(self, dim, config, layer_idx=0):
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, state=None, return_state=False):
        y = self.proj(x.cumsum(1) / torch.arange(1, x.size(1) + 1, device=x.device)[None, :, None])
        return (y, None) if return_state else y
