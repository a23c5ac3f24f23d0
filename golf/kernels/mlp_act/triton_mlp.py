"""Triton matmuls with the MLP activation in their epilogues (``reference.py`` has the math and the PyTorch twin).

* ``_fc_act_fwd``: ``h = x W1^T`` for an ``[BM, BN]`` tile, then stores ``h`` and ``a = leaky_relu(h, slope)^2``
  (from ``h`` rounded to the output dtype, as the unfused path computes it). The separate activation kernel read
  ``h`` back (``M F`` elements) to write ``a``.
* ``_dgrad_act_bwd``: ``da = dy W2`` for a tile, then loads ``h`` and stores ``dh = da act'(h)``: ``da`` is never
  written and read back (``2 M F`` elements less than a matmul followed by the activation's backward).

Why by hand: cuBLAS(Lt) has ReLU/GELU epilogues only, and Inductor's GEMM templates (``max_autotune_gemm``) did not
fuse this activation and made the step slower (benchmarks/RESULTS.md, eleventh session). Both kernels are plain
tiled matmuls over K with fp32 accumulation, grouped along M for L2 reuse of the weight tiles; no TMA descriptors.
The other matmuls of the MLP (``y = a W2^T``, ``dx = dh W1``, the weight gradients) stay with cuBLAS.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from golf.kernels.triton_util import dot_precision, interpreter_compat

__all__ = ["dgrad_act_bwd_triton", "fc_act_fwd_triton"]

# Tile sizes and launch settings per kernel: a common Hopper starting point, not yet swept on a GPU
# (benchmarks/mlp_kernel.py --sweep times the alternatives).
LAUNCH_CONFIG: dict[str, dict[str, int]] = {
    "fwd": {"bm": 128, "bn": 128, "bk": 64, "group_m": 8, "num_warps": 8, "num_stages": 3},
    "bwd": {"bm": 128, "bn": 128, "bk": 64, "group_m": 8, "num_warps": 8, "num_stages": 3},
}


@triton.jit
def _tile_ids(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's (row block, column block), grouped GROUP_M row blocks at a time so that they share B's tiles."""
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    in_group = GROUP_M * num_n
    first_m = (pid // in_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % in_group) % group_m, (pid % in_group) // group_m


@triton.jit
def _matmul_tile(a, b, M, N, K, s_am, s_ak, s_bk, s_bn,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                 DOT_PREC: tl.constexpr):  # fmt: skip
    """This program's fp32 ``[BM, BN]`` tile of ``A [M, K] @ B [K, N]`` (any strides), with the tile's offsets into a
    contiguous ``[M, N]`` output and its mask."""
    pid_m, pid_n = _tile_ids(M, N, BM, BN, GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    m_m, m_n = offs_m < M, offs_n < N
    a_ptrs = a + offs_m[:, None].to(tl.int64) * s_am + offs_k[None, :] * s_ak
    b_ptrs = b + offs_k[:, None] * s_bk + offs_n[None, :] * s_bn
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        m_k = offs_k < K - k0
        b_a = tl.load(a_ptrs, mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_b = tl.load(b_ptrs, mask=m_k[:, None] & m_n[None, :], other=0.0)
        acc = tl.dot(b_a, b_b, acc, input_precision=DOT_PREC)
        a_ptrs += BK * s_ak
        b_ptrs += BK * s_bk
    return acc, offs_m[:, None].to(tl.int64) * N + offs_n[None, :], m_m[:, None] & m_n[None, :]


@triton.jit
def _fc_act_fwd(
    x, w, h, act, M, N, K, s_xm, s_wn,
    SLOPE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PREC: tl.constexpr,
):  # fmt: skip
    # B = W^T: element (k, n) of B is w[n, k]
    acc, offs, mask = _matmul_tile(x, w, M, N, K, s_xm, 1, 1, s_wn, BM, BN, BK, GROUP_M, DOT_PREC)
    b_h = acc.to(h.dtype.element_ty)
    tl.store(h + offs, b_h, mask=mask)
    b_hf = b_h.to(tl.float32)
    b_l = tl.where(b_hf > 0, b_hf, SLOPE * b_hf)
    tl.store(act + offs, (b_l * b_l).to(act.dtype.element_ty), mask=mask)


@triton.jit
def _dgrad_act_bwd(
    dy, w, h, dh, M, N, K, s_dym, s_wk,
    SLOPE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PREC: tl.constexpr,
):  # fmt: skip
    # B = W2 [K = D, N = F] as stored
    acc, offs, mask = _matmul_tile(dy, w, M, N, K, s_dym, 1, s_wk, 1, BM, BN, BK, GROUP_M, DOT_PREC)
    b_h = tl.load(h + offs, mask=mask, other=0.0).to(tl.float32)
    b_d = acc * tl.where(b_h > 0, 2 * b_h, (2 * SLOPE * SLOPE) * b_h)
    tl.store(dh + offs, b_d.to(dh.dtype.element_ty), mask=mask)


def _grid(m: int, n: int, cfg: dict[str, int]) -> tuple[int]:
    return (triton.cdiv(m, cfg["bm"]) * triton.cdiv(n, cfg["bn"]),)


def _check(name: str, a: Tensor, b: Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"{name}: needs 2-D operands of one dtype and device, got {tuple(a.shape)} {a.dtype} "
                         f"{a.device} and {tuple(b.shape)} {b.dtype} {b.device}")
    if a.stride(1) != 1 or b.stride(1) != 1:
        raise ValueError(f"{name}: the operands' last dimension must be contiguous")


def fc_act_fwd_triton(x: Tensor, w1: Tensor, slope: float) -> tuple[Tensor, Tensor]:
    """``h = x w1^T`` and ``a = leaky_relu(h, slope)^2`` for ``x [M, D]``, ``w1 [F, D]`` (one dtype); (h, a)."""
    _check("fc_act_fwd_triton", x, w1)
    interpreter_compat()
    if x.shape[1] != w1.shape[1]:
        raise ValueError(f"fc_act_fwd_triton: x {tuple(x.shape)} and w1 {tuple(w1.shape)} disagree on D")
    (m, d), f = x.shape, w1.shape[0]
    h, act = x.new_empty(m, f), x.new_empty(m, f)
    cfg = LAUNCH_CONFIG["fwd"]
    _fc_act_fwd[_grid(m, f, cfg)](
        x, w1, h, act, m, f, d, x.stride(0), w1.stride(0),
        SLOPE=float(slope), BM=cfg["bm"], BN=cfg["bn"], BK=cfg["bk"], GROUP_M=cfg["group_m"],
        DOT_PREC=dot_precision(x.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return h, act


def dgrad_act_bwd_triton(dy: Tensor, w2: Tensor, h: Tensor, slope: float) -> Tensor:
    """``dh = (dy w2) act'(h)`` for ``dy [M, D]``, ``w2 [D, F]``, ``h [M, F]`` (contiguous), in h's dtype."""
    _check("dgrad_act_bwd_triton", dy, w2)
    interpreter_compat()
    (m, d), f = dy.shape, w2.shape[1]
    if w2.shape[0] != d or h.shape != (m, f) or not h.is_contiguous():
        raise ValueError(f"dgrad_act_bwd_triton: dy {tuple(dy.shape)}, w2 {tuple(w2.shape)} and h {tuple(h.shape)} "
                         "disagree (or h is not contiguous)")
    dh = torch.empty_like(h)
    cfg = LAUNCH_CONFIG["bwd"]
    _dgrad_act_bwd[_grid(m, f, cfg)](
        dy, w2, h, dh, m, f, d, dy.stride(0), w2.stride(0),
        SLOPE=float(slope), BM=cfg["bm"], BN=cfg["bn"], BK=cfg["bk"], GROUP_M=cfg["group_m"],
        DOT_PREC=dot_precision(dy.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return dh
