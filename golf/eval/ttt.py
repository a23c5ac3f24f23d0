"""Score-first test-time training: the optimizer side (parameter selection, lockstep data-parallel SGD on already
scored tokens, per-document batched LoRA). The scoring loops that decide *when* these run live in golf.eval.modes."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from golf.errors import GolfError
from golf.eval.config import TTTConfig


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def select_params(model: nn.Module, which: str) -> list[tuple[str, nn.Parameter]]:
    """all | matrices (2-D block weights, not the embedding) | a regex searched in the parameter names."""
    named = list(model.named_parameters())
    if which == "all":
        chosen = named
    elif which == "matrices":
        chosen = [(n, p) for n, p in named if p.ndim == 2 and n.startswith("blocks.")]
    else:
        try:
            pattern = re.compile(which)
        except re.error as e:
            raise GolfError(f"eval.ttt.params={which!r}: not all|matrices and not a valid regex ({e})") from None
        chosen = [(n, p) for n, p in named if pattern.search(n)]
    if not chosen:
        raise GolfError(f"eval.ttt.params={which!r} selects no parameter; use all, matrices or a name pattern")
    return chosen


def make_optimizer(params: list[torch.Tensor], cfg: TTTConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)


def scheduled_lr(cfg: TTTConfig, i: int, n: int) -> float:
    if cfg.lr_schedule == "cosine" and n > 1:
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * i / n))
    return cfg.lr


class ChunkTrainer:
    """Global SGD on already-scored chunks. Every rank holds the same model: each computes the gradient of
    ``sum(NLL of its share of the chunk's targets) / (targets in the whole chunk)``, the gradients are summed over
    ranks (all-reduce), clipped, and every rank takes the same optimizer step."""

    def __init__(self, model: nn.Module, cfg: TTTConfig, n_train_chunks: int) -> None:
        self.model, self.cfg, self.n_train_chunks = model, cfg, n_train_chunks
        self.named = select_params(model, cfg.params)
        self.params = [p for _, p in self.named]
        self.saved_flags = {id(p): p.requires_grad for p in model.parameters()}
        chosen = {id(p) for p in self.params}
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
        self.backup = [p.detach().clone() for p in self.params]
        self.opt = make_optimizer(self.params, cfg)
        self.steps = 0
        self.chunks = 0

    def train(self, chunk_index: int, forward_loss: Callable[[], None]) -> None:
        """``forward_loss()`` runs forward+backward over this rank's micro-batches (the loss already divided by the
        global target count); then all-reduce, clip and step, ``epochs`` times."""
        for group in self.opt.param_groups:
            group["lr"] = scheduled_lr(self.cfg, self.chunks, self.n_train_chunks)
        for _ in range(self.cfg.epochs):
            self.opt.zero_grad(set_to_none=False)
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            forward_loss()
            if _distributed():
                flat = torch.cat([p.grad.reshape(-1) for p in self.params])
                dist.all_reduce(flat)
                offset = 0
                for p in self.params:
                    n = p.numel()
                    p.grad.copy_(flat[offset : offset + n].view_as(p))
                    offset += n
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.opt.step()
            self.steps += 1
        self.chunks += 1

    def restore(self) -> None:
        """Put the weights and requires_grad flags back as they were before evaluation."""
        with torch.no_grad():
            for p, b in zip(self.params, self.backup):
                p.copy_(b)
        for p in self.model.parameters():
            p.requires_grad_(self.saved_flags[id(p)])
            p.grad = None


class BatchedLoRA:
    """One LoRA adapter per row of the batch (= per document) on the chosen Linear modules, added through forward
    hooks: ``y += (x A_row) B_row``. ``reset(rows)`` gives every row the same fresh adapter (A a fixed random init,
    B = 0, so the model starts exactly as the artifact) and a fresh optimizer. Rows never interact: the loss is a sum
    of per-row losses and SGD/Adam are elementwise, so a batch of documents adapts exactly like each alone."""

    def __init__(self, model: nn.Module, cfg: TTTConfig, device: torch.device) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        names = set(cfg.lora_targets)
        self.modules = [
            (n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in names
        ]
        if not self.modules:
            raise GolfError(
                f"eval.ttt.lora_targets={cfg.lora_targets} match no Linear module; names are the last component, "
                f"e.g. c_q, c_k, c_v, proj, in_proj, out_proj, fc"
            )
        gen = torch.Generator().manual_seed(0)
        self.init_a = [
            (torch.rand(m.in_features, cfg.lora_rank, generator=gen) * 2 - 1).div_(math.sqrt(m.in_features)).to(device)
            for _, m in self.modules
        ]
        self.A: list[torch.Tensor] = []
        self.B: list[torch.Tensor] = []
        self.rows = 0
        self.saved_flags = {id(p): p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.modules)]
        self.opt: torch.optim.Optimizer | None = None
        self.steps = 0

    def _hook(self, i: int):
        def hook(module, inputs, out):
            if not self.A:
                return out
            x = inputs[0]
            n = x.size(0)
            a, b = self.A[i][:n].to(x.dtype), self.B[i][:n].to(x.dtype)
            return out + torch.bmm(torch.bmm(x.reshape(n, -1, x.size(-1)), a), b).view_as(out)

        return hook

    def reset(self, rows: int) -> None:
        r = self.cfg.lora_rank
        self.A = [a0.expand(rows, -1, -1).clone().requires_grad_(True) for a0 in self.init_a]
        self.B = [
            torch.zeros(rows, r, m.out_features, device=self.device, requires_grad=True) for _, m in self.modules
        ]
        self.opt = make_optimizer(self.A + self.B, self.cfg)

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.steps += 1

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.A, self.B = [], []
        for p in self.model.parameters():
            p.requires_grad_(self.saved_flags[id(p)])


def masked_nll(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-position NLL (fp32 logits), zero where ``mask`` is False; shape of ``y``."""
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view_as(y)
    return nll * mask


def spans_positions(a: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Every position a training span touches (inputs a..e-1 and targets a+1..e), for the legality trace."""
    if len(a) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(x, y + 1, dtype=np.int64) for x, y in zip(a, e)])
