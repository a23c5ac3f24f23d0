"""Scoring: per-batch loss/token/byte sums and the full-split BPB loop shared by validation, finalization and
`golf validate`. Non-overlapping windows here; the other legal modes (sliding, doc-isolated, stateful, score-first
TTT) live in golf.eval."""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from golf.data.tokenizer import ByteLUTs
from golf.metrics import BitsPerByte


def autocast_for(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def score_windows(
    model: torch.nn.Module, windows: torch.Tensor, luts: ByteLUTs
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum of target NLL (nats, fp32 logits), number of targets and their bytes for ``[n, L+1]`` token windows."""
    x, y = windows[:, :-1], windows[:, 1:]
    logits = model(x)
    loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
    nbytes = luts.target_bytes(x, y).sum()
    return loss_sum, torch.tensor(y.numel(), device=y.device), nbytes


@dataclass
class EvalResult:
    val_loss: float
    val_bpb: float
    tokens: int
    bytes: int
    seconds: float

    def as_dict(self) -> dict:
        return dict(val_loss=self.val_loss, val_bpb=self.val_bpb, tokens=self.tokens, bytes=self.bytes, seconds=self.seconds)


@torch.no_grad()
def evaluate_bpb(
    model: torch.nn.Module, batches: Iterable[torch.Tensor], luts: ByteLUTs, device: torch.device
) -> EvalResult:
    """Score every window this rank is given; sums are all-reduced in float64 when torch.distributed is up."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    metric = BitsPerByte(sync_on_compute=dist.is_available() and dist.is_initialized()).to(device)
    luts = luts.to(device)
    with autocast_for(device):
        for batch in batches:
            metric.update(*score_windows(model, batch.to(device, non_blocking=True), luts))
    out = metric.compute()
    model.train(was_training)
    return EvalResult(
        float(out["val_loss"]), float(out["val_bpb"]), int(out["tokens"]), int(out["bytes"]), time.perf_counter() - t0
    )
