"""The MLP with its activation fused into the matmuls, as ``torch.library`` custom ops with autograd: :func:`mlp_act`.

``golf::mlp_act_fwd`` returns ``(y, h, a)``; ``h`` (pre-activation) and ``a`` (activation) are kept for the backward,
``golf::mlp_act_bwd``. On CUDA the activation runs in the epilogues of the Triton matmuls (``triton_mlp.py``) and
the other matmuls in cuBLAS; on any other device both ops run the PyTorch reference, so the ops, their fake functions
and ``torch.compile(fullgraph=True)`` work on CPU too. Opaque to Inductor: one graph, no break.
"""

from __future__ import annotations

import torch
from torch import Tensor

from golf.kernels.mlp_act.reference import grads_from_dh, mlp_act_reference, mlp_act_reference_bwd

__all__ = ["mlp_act"]


@torch.library.custom_op("golf::mlp_act_fwd", mutates_args=())
def _mlp_act_fwd(x: Tensor, w1: Tensor, w2: Tensor, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, h, a) for ``x [M, D]``, ``w1 [F, D]``, ``w2 [D, F]`` in one dtype."""
    if x.is_cuda:
        from golf.kernels.mlp_act.triton_mlp import fc_act_fwd_triton

        with torch.cuda.device(x.device):
            h, a = fc_act_fwd_triton(x.contiguous(), w1.contiguous(), slope)
        return a @ w2.t(), h, a
    with torch.no_grad():
        y, h, a = mlp_act_reference(x, w1, w2, slope)
    return y.contiguous(), h.contiguous(), a.contiguous()


@_mlp_act_fwd.register_fake
def _(x, w1, w2, slope):
    m, f = x.shape[0], w1.shape[0]
    return x.new_empty(m, w2.shape[0]), x.new_empty(m, f), x.new_empty(m, f)


@torch.library.custom_op("golf::mlp_act_bwd", mutates_args=())
def _mlp_act_bwd(
    x: Tensor, w1: Tensor, w2: Tensor, h: Tensor, a: Tensor, dy: Tensor, slope: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw1, dw2); ``h``, ``a`` are the forward's second and third outputs."""
    if not x.is_cuda:
        with torch.no_grad():
            return mlp_act_reference_bwd(x, w1, w2, h, a, dy, slope)
    from golf.kernels.mlp_act.triton_mlp import dgrad_act_bwd_triton

    dy = dy.contiguous()
    with torch.cuda.device(x.device):
        dh = dgrad_act_bwd_triton(dy, w2.contiguous(), h, slope)
    return grads_from_dh(x, w1, a, dy, dh)


@_mlp_act_bwd.register_fake
def _(x, w1, w2, h, a, dy, slope):
    return torch.empty_like(x), torch.empty_like(w1), torch.empty_like(w2)


def _setup_context(ctx, inputs, output) -> None:
    x, w1, w2, slope = inputs
    _, h, a = output
    ctx.mark_non_differentiable(h, a)
    ctx.save_for_backward(x, w1, w2, h, a)
    ctx.slope = slope


def _backward(ctx, dy: Tensor, _dh: Tensor | None, _da: Tensor | None):
    x, w1, w2, h, a = ctx.saved_tensors
    dx, dw1, dw2 = _mlp_act_bwd(x, w1, w2, h, a, dy, ctx.slope)
    return dx, dw1, dw2, None


_mlp_act_fwd.register_autograd(_backward, setup_context=_setup_context)


def mlp_act(x: Tensor, w1: Tensor, w2: Tensor, negative_slope: float = 0.0) -> Tensor:
    """``leaky_relu(x w1^T, negative_slope)^2 w2^T`` (differentiable); ``x [..., D]``, ``w1 [F, D]``, ``w2 [D, F]``, all
    in one dtype (cast the fp32 master weights to the activation dtype first, as ``CastedLinear`` does).

    Equals ``F.linear(F.leaky_relu(F.linear(x, w1), s).square(), w2)`` up to rounding: on CUDA the backward multiplies
    ``dy w2`` by the activation's derivative before rounding it once, where the unfused path rounds ``dy w2`` first.

    Example::

        >>> import torch
        >>> x, w1, w2 = torch.randn(4, 8), torch.randn(16, 8), torch.randn(8, 16)
        >>> mlp_act(x, w1, w2, 0.5).shape
        torch.Size([4, 8])
    """
    if x.shape[-1] != w1.shape[1] or w2.shape != (w1.shape[1], w1.shape[0]):
        raise ValueError(f"mlp_act: x {tuple(x.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)} need x [..., D], "
                         "w1 [F, D], w2 [D, F]")
    if not x.dtype == w1.dtype == w2.dtype:
        raise ValueError(f"mlp_act: x, w1, w2 must share a dtype, got {x.dtype}, {w1.dtype}, {w2.dtype}")
    y, _, _ = _mlp_act_fwd(x.reshape(-1, x.shape[-1]), w1, w2, float(negative_slope))
    return y.view(*x.shape[:-1], w2.shape[0])
