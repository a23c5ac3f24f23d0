"""The challenge baseline's ``int8_clean_per_row_v1`` rules (openai/parameter-golf ``train_gpt.py``), exactly.

Per tensor of the state dict:

* non-float tensors pass through unchanged;
* float tensors with at most 65,536 elements pass through: names containing a control pattern stay **fp32**,
  other fp32/bf16 tensors are stored **fp16** with their original dtype recorded (fp16/fp64 tensors are kept as is);
* 2-D float tensors get **per-row int8** in ``[-127, 127]``: ``c_r`` = 99.99984th percentile of ``|W_r|``
  (``torch.quantile`` on the row), ``s_r = max(c_r / 127, 1/127)`` in fp32,
  ``q = clamp(round(clamp(W, ±c_r) / s_r), ±127)``,
  and ``s_r`` is *stored* as fp16 (dequantization multiplies by the fp16 value, exactly as the baseline does);
* other float tensors get **per-tensor int8**: ``c`` = the same percentile over the flattened tensor,
  ``s = c / 127`` (1.0 when ``c == 0``) stored as a 0-d fp32 tensor.

Dequantization computes ``q.float() * s.float()`` and casts to the original dtype.

Note the ``clamp_min(1/127)`` on the per-row scale: it is the baseline's (rows whose 99.99984th percentile is below
1.0 all share the scale 1/127). It is kept for fidelity; use ``method="intN"`` with ``bits=8`` for an int8 quantizer
without that floor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from golf.quant.intn import flat_quantile, row_quantile
from golf.quant.roles import CONTROL_PATTERNS, matches_any

FORMAT = "int8_clean_per_row_v1"
INT8_CLIP_PERCENTILE = 99.99984
INT8_CLIP_Q = INT8_CLIP_PERCENTILE / 100.0
KEEP_FLOAT_MAX_NUMEL = 65_536
KEEP_FLOAT_STORE_DTYPE = torch.float16
PER_ROW_SCALE_DTYPE = torch.float16


def keep_float_tensor(
    name: str, t: Tensor, control_patterns: tuple[str, ...] = CONTROL_PATTERNS
) -> tuple[Tensor, torch.dtype | None]:
    """Small float tensor -> ``(stored tensor, original dtype if cast else None)``, as the baseline's keep_float_tensor.

    Unlike the baseline, a control tensor that is not fp32 records its dtype, so dequantization restores it.
    """
    if matches_any(name, control_patterns):
        return t.float().contiguous(), (t.dtype if t.dtype != torch.float32 else None)
    if t.dtype in (torch.float32, torch.bfloat16):
        return t.to(dtype=KEEP_FLOAT_STORE_DTYPE).contiguous(), t.dtype
    return t.contiguous(), None


def quantize_int8_per_row(t: Tensor) -> tuple[Tensor, Tensor]:
    """Baseline per-row int8 of a 2-D tensor: ``(q int8 [rows, cols], scale fp16 [rows])``."""
    t32 = t.detach().float()
    if t32.numel():
        clip_abs = row_quantile(t32.abs(), INT8_CLIP_Q)
    else:
        clip_abs = torch.zeros((t32.shape[0],), dtype=torch.float32)
    clipped = torch.maximum(torch.minimum(t32, clip_abs[:, None]), -clip_abs[:, None])
    scale = (clip_abs / 127.0).clamp_min(1.0 / 127.0)
    q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8).contiguous()
    return q, scale.to(dtype=PER_ROW_SCALE_DTYPE).contiguous()


def quantize_int8_per_tensor(t: Tensor) -> tuple[Tensor, Tensor]:
    """Baseline per-tensor int8 (vectors, 3-D+ tensors): ``(q int8, 0-d fp32 scale)``."""
    t32 = t.detach().float()
    clip_abs = flat_quantile(t32.abs(), INT8_CLIP_Q) if t32.numel() else 0.0
    scale = torch.tensor(clip_abs / 127.0 if clip_abs > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(t32, -clip_abs, clip_abs) / scale), -127, 127).to(torch.int8).contiguous()
    return q, scale


def quantize_float_tensor(t: Tensor) -> tuple[Tensor, Tensor]:
    """Baseline ``quantize_float_tensor``: per-row for 2-D tensors, per-tensor otherwise."""
    return quantize_int8_per_row(t) if t.ndim == 2 else quantize_int8_per_tensor(t)


def quantize_state_dict_int8(sd: dict[str, Tensor], control_patterns: tuple[str, ...] = CONTROL_PATTERNS):
    """The whole baseline export as a :class:`golf.quant.QuantizedState` (``QuantScheme(method="int8")``)."""
    from golf.quant import QuantScheme, quantize_state_dict

    return quantize_state_dict(sd, QuantScheme(method="int8", control_patterns=tuple(control_patterns), protect={}))
