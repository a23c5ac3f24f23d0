"""The MLP ``y = act(x W1^T) W2^T`` with ``act(h) = leaky_relu(h, slope)^2`` (``slope`` 0: the baseline's ReLU², 0.5:
the hybrid's LeakyReLU(0.5)²), forward and backward in plain PyTorch: the twin of ``triton_mlp.py``.

The Triton path computes the activation inside the matmuls that touch it: the forward's ``x W1^T`` stores the
pre-activation ``h`` and ``a = act(h)`` from its accumulator, and the backward's ``dy W2`` multiplies by ``act'(h)``
before its one store, so neither ``h`` is read back for the forward activation nor ``da`` written and read back for
the backward one. These functions are what those kernels must equal, and the CPU path of the custom op.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _at_least_fp32(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def activation(h: Tensor, slope: float) -> Tensor:
    """``leaky_relu(h, slope)^2``, computed in fp32 (fp64 for fp64), returned in ``h``'s dtype."""
    hf = _at_least_fp32(h)
    return torch.where(hf > 0, hf, slope * hf).square().to(h.dtype)


def activation_grad(da: Tensor, h: Tensor, slope: float) -> Tensor:
    """``da * act'(h)`` with ``act'(h) = 2 h`` for ``h > 0`` and ``2 slope^2 h`` otherwise, in fp32 (fp64 for fp64)."""
    hf = _at_least_fp32(h)
    return _at_least_fp32(da) * torch.where(hf > 0, 2 * hf, (2 * slope * slope) * hf)


def mlp_act_reference(x: Tensor, w1: Tensor, w2: Tensor, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, h, a) for ``x [M, D]``, ``w1 [F, D]``, ``w2 [D, F]``: h = x w1^T, a = act(h), y = a w2^T (x's dtype)."""
    h = x @ w1.t()
    a = activation(h, slope)
    return a @ w2.t(), h, a


def mlp_act_reference_bwd(
    x: Tensor, w1: Tensor, w2: Tensor, h: Tensor, a: Tensor, dy: Tensor, slope: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw1, dw2) of :func:`mlp_act_reference` given the output's gradient ``dy [M, D]``."""
    return grads_from_dh(x, w1, a, dy, activation_grad(dy @ w2, h, slope).to(h.dtype))


def grads_from_dh(x: Tensor, w1: Tensor, a: Tensor, dy: Tensor, dh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw1, dw2) once the pre-activation's gradient ``dh`` is known: the backward's plain matmuls (cuBLAS on both
    paths)."""
    return dh @ w1, dh.t() @ x, dy.t() @ a
