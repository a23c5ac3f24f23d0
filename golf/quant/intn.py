"""Symmetric per-row int-N quantization (N = 2..8) stored in int8 containers with fp16 per-row scales.

For a matrix ``W`` (rows = output features) and ``L = 2**(N-1) - 1`` levels on each side of zero
(int6: ``L = 31``, codes in ``[-31, 31]``)::

    c_r   = clip value of row r          # percentile of |W_r|, k * std(W_r) (SDClip) or max |W_r|
    s_r   = fp16(max(c_r / L, 2**-24))   # the stored scale; quantization uses this rounded value
    q_rc  = clamp(round(W_rc / s_r), -L, L)
    Ŵ_rc  = q_rc * s_r

Using the fp16-rounded scale for the rounding step (as the records' GPTQ/SDClip code does) makes the stored
codes consistent with the stored scale, so fake-quant during training (:mod:`golf.quant.qat`) reproduces the
exported weights bit for bit. ``round`` is round-half-to-even (``torch.round``).

Tensors that are not 2-D get one fp32 scale for the whole tensor (the baseline's per-tensor rule).
"""

from __future__ import annotations

import torch
from torch import Tensor

CLIP_METHODS = ("percentile", "sdclip", "absmax")
DEFAULT_PERCENTILE = 99.99984  # the baseline's INT8_CLIP_PERCENTILE
DEFAULT_SDCLIP_K = 12.85  # the records' MATRIX_CLIP_SIGMAS
MIN_SCALE = 2.0**-24  # smallest positive fp16 (subnormal): a scale never rounds to 0 in storage
MAX_FP16 = 65504.0
# torch.quantile refuses inputs with more than 2**24 elements; larger inputs are processed in row chunks.
_QUANTILE_MAX_NUMEL = 1 << 24


def levels(bits: int) -> int:
    """Largest code magnitude for symmetric int-N: ``2**(bits-1) - 1`` (int8: 127, int6: 31, int5: 15)."""
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 2..8 (int8 containers), got {bits}")
    return (1 << (int(bits) - 1)) - 1


def row_quantile(t: Tensor, q: float) -> Tensor:
    """``torch.quantile(t, q, dim=1)`` for a 2-D tensor, in row chunks when it exceeds torch's 2**24 limit.

    Each row's quantile only depends on that row, so chunking gives identical values.
    """
    rows, cols = t.shape
    if t.numel() <= _QUANTILE_MAX_NUMEL:
        return torch.quantile(t, q, dim=1)
    step = max(1, _QUANTILE_MAX_NUMEL // max(cols, 1))
    return torch.cat([torch.quantile(t[i : i + step], q, dim=1) for i in range(0, rows, step)])


def flat_quantile(t: Tensor, q: float) -> float:
    """``torch.quantile(t.flatten(), q)`` (linear interpolation), also for tensors above torch's 2**24 limit."""
    flat = t.flatten()
    n = flat.numel()
    if n <= _QUANTILE_MAX_NUMEL:
        return float(torch.quantile(flat, q).item())
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    v_lo = float(torch.kthvalue(flat, lo + 1).values)
    v_hi = float(torch.kthvalue(flat, hi + 1).values) if hi != lo else v_lo
    return v_lo + (v_hi - v_lo) * (pos - lo)


def round_to_fp16(x: Tensor) -> Tensor:
    """``x.to(float16).float()`` (round-to-nearest-even) for fp32 ``x`` in ``[2**-24, 65504]``, in pure fp32 arithmetic.

    Same values as the cast, but ``torch.compile`` keeps it: Inductor drops fp32→fp16→fp32 round trips inside
    fused kernels unless ``torch._inductor.config.emulate_precision_casts`` is set.
    """
    _, e = torch.frexp(x)
    ulp = torch.exp2((e.clamp_min(-13) - 11).to(x.dtype))  # fp16 has 11 significant bits; subnormal step 2**-24
    return torch.round(x / ulp) * ulp


def clip_values(
    w: Tensor, clip: str = "percentile", *, sdclip_k: float = DEFAULT_SDCLIP_K, percentile: float = DEFAULT_PERCENTILE
) -> Tensor:
    """Per-row clip value ``c_r`` (fp32, shape ``[rows]``) of a 2-D fp32 tensor under the given clip rule.

    ``percentile``: the ``percentile``-th percentile of ``|W_r|`` (torch.quantile, linear interpolation);
    ``sdclip``: ``sdclip_k * std(W_r)`` (unbiased std, as the records compute it); ``absmax``: ``max |W_r|``.
    """
    if w.ndim != 2:
        raise ValueError(f"clip_values expects a 2-D tensor, got shape {tuple(w.shape)}")
    if w.shape[1] == 0:
        return torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
    if clip == "percentile":
        return row_quantile(w.abs(), percentile / 100.0)
    if clip == "sdclip":
        std = w.std(dim=1) if w.shape[1] > 1 else w.abs().squeeze(1)
        return sdclip_k * std
    if clip == "absmax":
        return w.abs().amax(dim=1)
    raise ValueError(f"unknown clip rule {clip!r}; expected one of {CLIP_METHODS}")


def row_scales(
    w: Tensor,
    bits: int,
    clip: str = "percentile",
    *,
    sdclip_k: float = DEFAULT_SDCLIP_K,
    percentile: float = DEFAULT_PERCENTILE,
) -> Tensor:
    """The stored fp16 per-row scales ``s_r = fp16(max(c_r / L, 2**-24))`` for a 2-D tensor."""
    c = clip_values(w.float(), clip, sdclip_k=sdclip_k, percentile=percentile)
    return (c / levels(bits)).clamp(MIN_SCALE, MAX_FP16).to(torch.float16)


def quantize_with_scales(w: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Codes ``clamp(round(W / s_r), -L, L)`` as int8, for given (fp16) per-row scales."""
    lv = levels(bits)
    q = torch.round(w.float() / scale.float()[:, None]).clamp_(-lv, lv)
    return q.to(torch.int8).contiguous()


def quantize_per_row(
    w: Tensor,
    bits: int,
    clip: str = "percentile",
    *,
    sdclip_k: float = DEFAULT_SDCLIP_K,
    percentile: float = DEFAULT_PERCENTILE,
) -> tuple[Tensor, Tensor]:
    """Round-to-nearest per-row int-N of a 2-D tensor: returns ``(q int8 [rows, cols], scale fp16 [rows])``."""
    if w.ndim != 2:
        raise ValueError(f"quantize_per_row expects a 2-D tensor, got shape {tuple(w.shape)}")
    w32 = w.detach().float()
    s = row_scales(w32, bits, clip, sdclip_k=sdclip_k, percentile=percentile)
    return quantize_with_scales(w32, s, bits), s.contiguous()


def quantize_per_tensor(
    t: Tensor,
    bits: int,
    clip: str = "percentile",
    *,
    sdclip_k: float = DEFAULT_SDCLIP_K,
    percentile: float = DEFAULT_PERCENTILE,
) -> tuple[Tensor, Tensor]:
    """One fp32 scale for a whole (non-2-D) tensor: returns ``(q int8, 0-d fp32 scale)``; scale 1.0 when c = 0."""
    t32 = t.detach().float()
    lv = levels(bits)
    if t32.numel() == 0:
        c = 0.0
    elif clip == "percentile":
        c = flat_quantile(t32.abs(), percentile / 100.0)
    elif clip == "sdclip":
        c = sdclip_k * float(t32.flatten().std()) if t32.numel() > 1 else float(t32.abs().max())
    elif clip == "absmax":
        c = float(t32.abs().max())
    else:
        raise ValueError(f"unknown clip rule {clip!r}; expected one of {CLIP_METHODS}")
    scale = torch.tensor(c / lv if c > 0 else 1.0, dtype=torch.float32)
    q = torch.round(torch.clamp(t32, -c, c) / scale).clamp_(-lv, lv).to(torch.int8).contiguous()
    return q, scale


def dequantize_per_row(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``q * s_r`` broadcast over the trailing dimensions, in fp32, then cast to ``dtype``."""
    s = scale.to(torch.float32).view(q.shape[0], *([1] * (q.ndim - 1)))
    return (q.float() * s).to(dtype).contiguous()


def dequantize_per_tensor(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    return (q.float() * float(scale.item())).to(dtype).contiguous()
