"""One optimizer for the whole model: Muon on the 2-D block matrices, Adam on the rest (parameter-golf.md §3.2).

Why golf has its own rather than ``torch.optim.Muon`` + ``torch.optim.Adam``: the challenge shards Newton–Schulz
across ranks (each rank orthogonalises every world_size-th matrix, then one flat all-reduce), which torch.optim.Muon
does not do; and Lightning counts ``global_step`` once per optimizer ``step()``, so two optimizers would double it.
Adam groups use PyTorch's own functional Adam (fused on CUDA), so only Muon's update is written here.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.distributed as dist
from torch.optim.adam import adam as functional_adam

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Quintic Newton–Schulz orthogonalisation in bf16 of a matrix or a batch of same-shaped matrices [..., m, n]."""
    a, b, c = NS_COEFFICIENTS
    X = G.bfloat16()
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if transposed else X


class GolfOptimizer(torch.optim.Optimizer):
    """Param groups carry ``use_muon``. Muon groups: lr, momentum, nesterov, ns_steps, weight_decay, row_normalize
    (MuonEq-R). Adam groups: lr, betas, eps, weight_decay. ``base_lr`` is kept per group so that a schedule can set
    ``lr = base_lr * scale``."""

    def __init__(self, param_groups: list[dict], fused: bool | None = None, compile_ns: bool = False) -> None:
        defaults = dict(
            lr=0.02,
            use_muon=False,
            momentum=0.95,
            nesterov=True,
            ns_steps=5,
            row_normalize=False,
            betas=(0.9, 0.95),
            eps=1e-8,
            weight_decay=0.0,
        )
        for g in param_groups:
            g.setdefault("base_lr", g.get("lr", defaults["lr"]))
        super().__init__(param_groups, defaults)
        self.fused = fused
        self._ns = torch.compile(newton_schulz) if compile_ns else newton_schulz

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adam_step(group)
        return loss

    def _adam_step(self, group: dict) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        fused = self.fused if self.fused is not None else params[0].is_cuda
        beta1, beta2 = group["betas"]
        functional_adam(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            foreach=None if fused else True,
            fused=fused or None,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )

    def _muon_step(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        # Momentum on every rank (gradients are already averaged by DDP), orthogonalisation on a 1/world share.
        updates: dict[torch.Tensor, torch.Tensor] = {}
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(p.grad)
            updates[p] = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        flat_size = sum(p.numel() for p in params)
        flat = torch.zeros(flat_size, dtype=torch.bfloat16, device=params[0].device)
        offsets, off = {}, 0
        for p in params:
            offsets[p] = off
            off += p.numel()
        by_shape: dict[tuple[int, ...], list[torch.Tensor]] = defaultdict(list)
        for i, p in enumerate(params):
            if i % world == rank:
                by_shape[tuple(p.shape)].append(p)
        for shape, group_params in by_shape.items():
            G = torch.stack([updates[p] for p in group_params])
            if group["row_normalize"]:
                G = G / (G.norm(dim=-1, keepdim=True) + 1e-7)
            X = self._ns(G, group["ns_steps"])
            X = X * math.sqrt(max(1.0, shape[-2] / shape[-1]))
            for p, x in zip(group_params, X):
                flat[offsets[p] : offsets[p] + p.numel()] = x.reshape(-1)
        if world > 1:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        lr, wd = group["lr"], group["weight_decay"]
        for p in params:
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(flat[offsets[p] : offsets[p] + p.numel()].view_as(p).to(p.dtype), alpha=-lr)
