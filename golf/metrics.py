"""Bits per byte as a torchmetrics Metric: float64 sums of loss (nats), tokens and bytes, summed across ranks."""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class BitsPerByte(Metric):
    """``bpb = (loss_sum / tokens) / ln 2 * tokens / bytes`` (parameter-golf.md §1.4). ``compute`` returns
    a dict of float64 tensors (val_loss, val_bpb, tokens, bytes); it is a collective under DDP, so every rank must
    call it."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("loss_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bytes", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, loss_sum: torch.Tensor, tokens: torch.Tensor | int, nbytes: torch.Tensor | int) -> None:
        self.loss_sum += loss_sum.detach().to(torch.float64)
        self.tokens += torch.as_tensor(tokens, dtype=torch.float64, device=self.tokens.device)
        self.bytes += torch.as_tensor(nbytes, dtype=torch.float64, device=self.bytes.device)

    def compute(self) -> dict[str, torch.Tensor]:
        val_loss = self.loss_sum / self.tokens
        val_bpb = val_loss / math.log(2.0) * self.tokens / self.bytes
        return {"val_loss": val_loss, "val_bpb": val_bpb, "tokens": self.tokens.clone(), "bytes": self.bytes.clone()}
