"""Small building blocks shared by the mixers: a Linear with fp32 master weights and switchable fake-quant, RoPE, MLP."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from golf.kernels.mlp_act import mlp_act


class CastedLinear(nn.Linear):
    """nn.Linear whose fp32 weight is cast to the activation dtype at matmul time (bf16 autocast keeps fp32 masters).

    ``weight_transform`` (set by the LateQAT callback) maps the weight before use, e.g. to its fake-quantized value
    with a straight-through gradient."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, zero_init: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.weight_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
        if zero_init:
            nn.init.zeros_(self.weight)

    def weight_as(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight as this layer multiplies with it: after ``weight_transform``, in ``dtype``."""
        w = self.weight if self.weight_transform is None else self.weight_transform(self.weight)
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight_as(x.dtype), bias)


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast computes in on ``x``'s device, or ``x``'s own dtype where autocast is off."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def rms_norm(x: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),), eps=eps)


class RMSNorm(nn.Module):
    """Parameter-free RMSNorm as a module, so that calibration hooks can see its output (the tied head's input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x)


class Rotary(nn.Module):
    """RoPE tables (half-split convention of the baseline) for positions ``[0, cached_positions)``, kept as
    non-persistent buffers (never in a checkpoint or an artifact; DDP is told not to broadcast them: ``GolfLM``).
    Computed inside the compiled step instead, Inductor fused the table's pow, cos and sin into the kernels of q and k,
    recomputing them for every element of every head (``benchmarks/RESULTS.md``, eighth session). Positions past the
    table (long generation) are computed on the fly."""

    def __init__(self, dim: int, base: float = 10000.0, cached_positions: int = 8192) -> None:
        super().__init__()
        self.dim = dim
        self.base = base
        cos, sin = self._tables(0, cached_positions, torch.device("cpu"))
        self.register_buffer("cos_cached", cos, persistent=False)
        self.register_buffer("sin_cached", sin, persistent=False)

    def _tables(self, offset: int, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim))
        t = torch.arange(offset, offset + seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        return freqs.cos(), freqs.sin()

    def forward(self, seq_len: int, device: torch.device, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin`` ``[1, 1, seq_len, dim / 2]`` (fp32) for positions ``offset .. offset + seq_len - 1``."""
        end = offset + seq_len
        if end <= self.cos_cached.size(0):
            cos, sin = self.cos_cached[offset:end].to(device), self.sin_cached[offset:end].to(device)
        else:
            cos, sin = self._tables(offset, seq_len, device)
        return cos[None, None], sin[None, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


class MLP(nn.Module):
    """fc -> relu² (baseline) or LeakyReLU(0.5)² -> proj (zero-initialised).

    ``fused``: the same MLP through ``golf::mlp_act`` (golf/kernels/mlp_act), whose Triton matmuls apply the activation
    and its gradient in their epilogues, whenever no hook watches fc or proj (GPTQ's calibration and test-time
    training's LoRA hook those modules' calls, so they get the module path)."""

    def __init__(self, dim: int, mult: float, activation: str = "relu2", fused: bool = False) -> None:
        super().__init__()
        if activation not in ("relu2", "leaky_relu2"):
            raise ValueError(f"model.backbone.mlp_activation={activation!r}: use 'relu2' or 'leaky_relu2'")
        hidden = int(mult * dim)
        self.fc = CastedLinear(dim, hidden)
        self.proj = CastedLinear(hidden, dim, zero_init=True)
        self.negative_slope = 0.0 if activation == "relu2" else 0.5
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and not (self.fc._forward_hooks or self.fc._forward_pre_hooks or self.proj._forward_hooks
                               or self.proj._forward_pre_hooks):  # fmt: skip
            dtype = autocast_dtype(x)  # a custom op has no autocast rule: cast as autocast casts F.linear's operands
            return mlp_act(x.to(dtype), self.fc.weight_as(dtype), self.proj.weight_as(dtype), self.negative_slope)
        h = self.fc(x)
        h = F.relu(h) if self.negative_slope == 0.0 else F.leaky_relu(h, self.negative_slope)
        return self.proj(h.square())
