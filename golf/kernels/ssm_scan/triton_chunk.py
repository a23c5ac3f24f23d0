"""Triton forward and backward of the chunked GLA core (scalar log-decay per step and head), with its output stage.

Computes ``o_t = sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s + exp(G_t) h0 q_t``, the output
``y_t = (o_t + skip_t v_t) * silu(z_t)`` (skip and z optional; Mamba-3's diagonal correction and D skip are the one
coefficient ``skip = D - diag``) and the final state (see ``reference.py`` for the math and
:func:`~golf.kernels.ssm_scan.reference.gla_chunked_reference` / ``gated_output`` for the PyTorch twins). Five
kernels, fla-style (one sequential pass over chunks per (b, h) for the states, the rest parallel over chunks):

forward
  1. ``_fwd_states``: state before every chunk (``hs``, input dtype) and the final state (fp32); grid (P/BV, B*H).
  2. ``_fwd_output``: intra-chunk attention + output from the chunk's state, then the output stage in fp32 before
     the one rounding; with a gate it also writes ``u = o + skip v`` (input dtype) for the backward; grid
     (NT / chunks, B*H).
backward (the chunk states come from the forward: saved, ``B T H P N / C`` elements, rather than recomputed)
  3. ``_bwd_output_stage`` (with skip or gate): o's gradient ``do = dy silu(z)``, dz (from u), dskip; grid (NT, B*H).
  4. ``_bwd_states``: gradient of the state after every chunk (``dhs``) and of the initial state; grid (P/BV, B*H).
  5. ``_bwd_dqkvg``: dq, dk, dv (with the skip term) and the log-decay gradient of a chunk; grid (NT / chunks, B*H).

Measured on an H200 (B 32, T 1024, H 16, P = N = 64; ``benchmarks/RESULTS.md``): the output stage in the forward
kernels and a bandwidth-bound kernel of its own in the backward replace four Inductor kernels (0.27 ms) with 0.13 ms.
Recomputing o in the backward instead of saving u, or doing the output stage's backward inside ``_bwd_dqkvg``, cost
more: both held the register-bound kernel's tiles longer (0.49 ms for ``_bwd_dqkvg`` instead of 0.27).

Layouts: q, k ``[B, T, H, N]``, y ``[B, T, H, P]`` (contiguous), v and z ``[B, T, H, P]`` at any row stride, log-decay
``[B, T, H]`` fp32, states ``[B, H, P, N]`` fp32. The log-decay cumsum is restarted in each chunk and kept in fp32;
``tl.dot`` takes bf16 operands for bf16 inputs and fp32 operands (tf32 unless
``torch.get_float32_matmul_precision() == "highest"``) for fp32 inputs, always with fp32 accumulation. No TMA
descriptors and no ``triton.set_allocator``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from golf.kernels.triton_util import dot_precision, interpreter_compat

__all__ = ["gla_chunk_bwd_triton", "gla_chunk_fwd_triton"]

SUPPORTED_DIMS = (16, 32, 64, 128)


# ---------------------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_states(
    k, v, g, h0, hs, ht,
    T, NT, s_vt,
    H: tl.constexpr, N: tl.constexpr, P: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
    HAS_H0: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    i_bh64 = i_bh.to(tl.int64)
    offs_t = tl.arange(0, BT)
    offs_n = tl.arange(0, N)
    offs_v = i_v * BV + tl.arange(0, BV)
    k += i_b * T * H * N + i_h * N
    v += i_b * T * s_vt + i_h * P
    g += i_b * T * H + i_h
    state_offs = offs_v[:, None] * N + offs_n[None, :]  # (BV, N) tile of a (P, N) state
    if HAS_H0:
        b_h = tl.load(h0 + i_bh64 * P * N + state_offs).to(tl.float32)
    else:
        b_h = tl.zeros([BV, N], dtype=tl.float32)
    for i_t in range(NT):
        tl.store(hs + (i_bh64 * NT + i_t) * P * N + state_offs, b_h.to(hs.dtype.element_ty))
        rows = i_t * BT + offs_t
        m_t = rows < T
        b_g = tl.load(g + rows * H, mask=m_t, other=0.0)
        b_gc = tl.cumsum(b_g, axis=0)
        b_gl = tl.sum(b_g, axis=0)
        b_k = tl.load(k + rows[:, None] * (H * N) + offs_n[None, :], mask=m_t[:, None], other=0.0)
        b_v = tl.load(v + rows[:, None] * s_vt + offs_v[None, :], mask=m_t[:, None], other=0.0)
        b_vw = (b_v * tl.exp(b_gl - b_gc)[:, None]).to(b_k.dtype)
        b_h = b_h * tl.exp(b_gl) + tl.dot(tl.trans(b_vw), b_k, input_precision=DOT_PREC)
    tl.store(ht + i_bh64 * P * N + state_offs, b_h)


@triton.jit
def _causal_decay(gc, offs_t):
    """``exp(gc_t - gc_s)`` for s <= t, 0 above the diagonal: the in-chunk decay matrix."""
    causal = offs_t[:, None] >= offs_t[None, :]
    return tl.where(causal, tl.exp(tl.where(causal, gc[:, None] - gc[None, :], 0.0)), 0.0)


@triton.jit
def _head_rows(x, i_b, i_h, rows, offs_p, m_t, T, s_t, P: tl.constexpr):
    """One head's ``[BT, P]`` tile of a ``[B, T, H, P]`` tensor read at its row stride ``s_t`` (v and z: column
    slices of the mixer's input projection), 0 past T."""
    return tl.load(x + i_b * T * s_t + i_h * P + rows[:, None] * s_t + offs_p[None, :], mask=m_t[:, None], other=0.0)


@triton.jit
def _fwd_output(
    q, k, v, g, hs, skip, z, y, u,
    T, NT, s_vt, s_zt,
    H: tl.constexpr, N: tl.constexpr, P: tl.constexpr, BT: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_SKIP: tl.constexpr, HAS_Z: tl.constexpr, CHUNKS: tl.constexpr,
):  # fmt: skip
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    if CHUNKS == 1:  # no loop: 0.60 ms a call in the training step, a loop of one iteration 0.92 (RESULTS.md)
        _fwd_output_chunk(q, k, v, g, hs, skip, z, y, u, i_c, i_bh, T, NT, s_vt, s_zt,
                          H, N, P, BT, DOT_PREC, HAS_SKIP, HAS_Z)  # fmt: skip
    else:
        for i_t in range(i_c * CHUNKS, tl.minimum(i_c * CHUNKS + CHUNKS, NT)):
            _fwd_output_chunk(q, k, v, g, hs, skip, z, y, u, i_t, i_bh, T, NT, s_vt, s_zt,
                              H, N, P, BT, DOT_PREC, HAS_SKIP, HAS_Z)  # fmt: skip


@triton.jit
def _fwd_output_chunk(
    q, k, v, g, hs, skip, z, y, u, i_t, i_bh,
    T, NT, s_vt, s_zt,
    H: tl.constexpr, N: tl.constexpr, P: tl.constexpr, BT: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_SKIP: tl.constexpr, HAS_Z: tl.constexpr,
):  # fmt: skip
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    i_bh64 = i_bh.to(tl.int64)
    offs_t = tl.arange(0, BT)
    offs_n = tl.arange(0, N)
    offs_p = tl.arange(0, P)
    rows = i_t * BT + offs_t
    m_t = rows < T
    qk_offs = i_b * T * H * N + i_h * N + rows[:, None] * (H * N) + offs_n[None, :]
    y_offs = i_b * T * H * P + i_h * P + rows[:, None] * (H * P) + offs_p[None, :]
    g_offs = i_b * T * H + i_h + rows * H
    b_q = tl.load(q + qk_offs, mask=m_t[:, None], other=0.0)
    b_k = tl.load(k + qk_offs, mask=m_t[:, None], other=0.0)
    b_v = _head_rows(v, i_b, i_h, rows, offs_p, m_t, T, s_vt, P)
    b_g = tl.load(g + g_offs, mask=m_t, other=0.0)
    b_gc = tl.cumsum(b_g, axis=0)
    b_h = tl.load(hs + (i_bh64 * NT + i_t) * P * N + offs_p[:, None] * N + offs_n[None, :])  # (P, N)
    # inter-chunk: exp(gc_t) h q_t
    b_o = tl.dot(b_q, tl.trans(b_h), input_precision=DOT_PREC) * tl.exp(b_gc)[:, None]
    # intra-chunk: causal, decayed q k^T
    b_a = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC) * _causal_decay(b_gc, offs_t)
    b_o += tl.dot(b_a.to(b_v.dtype), b_v, input_precision=DOT_PREC)
    # output stage, in fp32 before the one rounding: y = (o + skip v) * silu(z)
    if HAS_SKIP:
        b_o += tl.load(skip + g_offs, mask=m_t, other=0.0)[:, None] * b_v.to(tl.float32)
    if HAS_Z:
        b_z = _head_rows(z, i_b, i_h, rows, offs_p, m_t, T, s_zt, P).to(tl.float32)
        tl.store(u + y_offs, b_o.to(u.dtype.element_ty), mask=m_t[:, None])  # the gate's backward reads it
        b_o = b_o * b_z * tl.sigmoid(b_z)
    tl.store(y + y_offs, b_o.to(y.dtype.element_ty), mask=m_t[:, None])


@triton.jit
def _bwd_states(
    q, do, g, dht, dhs, dh0,
    T, NT,
    H: tl.constexpr, N: tl.constexpr, P: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
    HAS_DHT: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    i_bh64 = i_bh.to(tl.int64)
    offs_t = tl.arange(0, BT)
    offs_n = tl.arange(0, N)
    offs_v = i_v * BV + tl.arange(0, BV)
    q += i_b * T * H * N + i_h * N
    do += i_b * T * H * P + i_h * P
    g += i_b * T * H + i_h
    state_offs = offs_v[:, None] * N + offs_n[None, :]
    if HAS_DHT:
        b_dh = tl.load(dht + i_bh64 * P * N + state_offs).to(tl.float32)
    else:
        b_dh = tl.zeros([BV, N], dtype=tl.float32)
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        # gradient of the state after chunk i_t
        tl.store(dhs + (i_bh64 * NT + i_t) * P * N + state_offs, b_dh.to(dhs.dtype.element_ty))
        rows = i_t * BT + offs_t
        m_t = rows < T
        b_g = tl.load(g + rows * H, mask=m_t, other=0.0)
        b_gc = tl.cumsum(b_g, axis=0)
        b_gl = tl.sum(b_g, axis=0)
        b_q = tl.load(q + rows[:, None] * (H * N) + offs_n[None, :], mask=m_t[:, None], other=0.0)
        b_do = tl.load(do + rows[:, None] * (H * P) + offs_v[None, :], mask=m_t[:, None], other=0.0)
        b_dow = (b_do * tl.exp(b_gc)[:, None]).to(b_q.dtype)
        b_dh = b_dh * tl.exp(b_gl) + tl.dot(tl.trans(b_dow), b_q, input_precision=DOT_PREC)
    tl.store(dh0 + i_bh64 * P * N + state_offs, b_dh)


@triton.jit
def _bwd_output_stage(
    v, skip, z, u, dy, do, dskip, dz,
    T, s_vt, s_zt,
    H: tl.constexpr, P: tl.constexpr, BT: tl.constexpr, HAS_SKIP: tl.constexpr, HAS_Z: tl.constexpr,
):  # fmt: skip
    """Backward of ``y = u * silu(z)``, ``u = o + skip v``: do = dy silu(z) (o's gradient, read by the two kernels
    below), dz from the u that the forward saved, dskip = sum_p do v. A kernel of its own: in ``_bwd_dqkvg`` the same
    work cost 0.22 ms instead of this kernel's 0.10 (B 32, T 1024, H 16, P 64 on an H200: it is at bandwidth here,
    while there it held the register-bound kernel's tiles longer)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    rows = i_t * BT + tl.arange(0, BT)
    offs_p = tl.arange(0, P)
    m_t = rows < T
    vo_offs = i_b * T * H * P + i_h * P + rows[:, None] * (H * P) + offs_p[None, :]
    g_offs = i_b * T * H + i_h + rows * H
    b_do = tl.load(dy + vo_offs, mask=m_t[:, None], other=0.0).to(tl.float32)
    if HAS_Z:
        b_z = _head_rows(z, i_b, i_h, rows, offs_p, m_t, T, s_zt, P).to(tl.float32)
        b_sig = tl.sigmoid(b_z)
        b_u = tl.load(u + vo_offs, mask=m_t[:, None], other=0.0).to(tl.float32)
        tl.store(dz + vo_offs, (b_do * b_u * b_sig * (1 + b_z * (1 - b_sig))).to(dz.dtype.element_ty),
                 mask=m_t[:, None])  # fmt: skip
        b_do = b_do * b_z * b_sig
    if HAS_SKIP:
        b_v = _head_rows(v, i_b, i_h, rows, offs_p, m_t, T, s_vt, P).to(tl.float32)
        tl.store(dskip + g_offs, tl.sum(b_do * b_v, axis=1), mask=m_t)
    tl.store(do + vo_offs, b_do.to(do.dtype.element_ty), mask=m_t[:, None])


@triton.jit
def _bwd_dqkvg(
    q, k, v, g, hs, dhs, skip, do, dq, dk, dv, dg,
    T, NT, s_vt,
    H: tl.constexpr, N: tl.constexpr, P: tl.constexpr, BT: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_SKIP: tl.constexpr, CHUNKS: tl.constexpr,
):  # fmt: skip
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    if CHUNKS == 1:  # no loop, as _fwd_output: a loop of one iteration compiles differently
        _bwd_dqkvg_chunk(q, k, v, g, hs, dhs, skip, do, dq, dk, dv, dg, i_c, i_bh, T, NT, s_vt,
                         H, N, P, BT, DOT_PREC, HAS_SKIP)  # fmt: skip
    else:
        for i_t in range(i_c * CHUNKS, tl.minimum(i_c * CHUNKS + CHUNKS, NT)):
            _bwd_dqkvg_chunk(q, k, v, g, hs, dhs, skip, do, dq, dk, dv, dg, i_t, i_bh, T, NT, s_vt,
                             H, N, P, BT, DOT_PREC, HAS_SKIP)  # fmt: skip


@triton.jit
def _bwd_dqkvg_chunk(
    q, k, v, g, hs, dhs, skip, do, dq, dk, dv, dg, i_t, i_bh,
    T, NT, s_vt,
    H: tl.constexpr, N: tl.constexpr, P: tl.constexpr, BT: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_SKIP: tl.constexpr,
):  # fmt: skip
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    i_bh64 = i_bh.to(tl.int64)
    offs_t = tl.arange(0, BT)
    offs_n = tl.arange(0, N)
    offs_p = tl.arange(0, P)
    rows = i_t * BT + offs_t
    m_t = rows < T
    qk_offs = i_b * T * H * N + i_h * N + rows[:, None] * (H * N) + offs_n[None, :]
    vo_offs = i_b * T * H * P + i_h * P + rows[:, None] * (H * P) + offs_p[None, :]
    g_offs = i_b * T * H + i_h + rows * H
    state_offs = (i_bh64 * NT + i_t) * P * N + offs_p[:, None] * N + offs_n[None, :]
    b_v = _head_rows(v, i_b, i_h, rows, offs_p, m_t, T, s_vt, P)
    b_do = tl.load(do + vo_offs, mask=m_t[:, None], other=0.0)
    b_g = tl.load(g + g_offs, mask=m_t, other=0.0)
    b_gc = tl.cumsum(b_g, axis=0)
    b_gl = tl.sum(b_g, axis=0)
    b_kdec = tl.exp(b_gl - b_gc)  # decay from step s to the end of the chunk
    # Registers, not FLOPs, bound this kernel: it is written in phases so that few tiles are alive at once, and each
    # gradient is stored as soon as it is complete (loop-free at 4 warps: 221 registers, 0 B of spills, 112 B when all
    # were stored at the end; in the 2-chunk pipeline 255 registers, 4 B: benchmarks/kernel_registers.py).

    # dv = A^T do + k dh_end^T (through the chunk's end state) + skip do
    b_q = tl.load(q + qk_offs, mask=m_t[:, None], other=0.0)
    b_k = tl.load(k + qk_offs, mask=m_t[:, None], other=0.0)
    b_dh = tl.load(dhs + state_offs)  # (P, N) gradient of the state after the chunk
    b_a = (tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC) * _causal_decay(b_gc, offs_t)).to(b_v.dtype)
    b_dv = tl.dot(tl.trans(b_a), b_do, input_precision=DOT_PREC)
    b_dv += tl.dot(b_k, tl.trans(b_dh).to(b_k.dtype), input_precision=DOT_PREC) * b_kdec[:, None]
    if HAS_SKIP:
        b_dv += b_do.to(tl.float32) * tl.load(skip + g_offs, mask=m_t, other=0.0)[:, None]
    tl.store(dv + vo_offs, b_dv.to(dv.dtype.element_ty), mask=m_t[:, None])

    # dq, dk from dA = (do v^T) * decay and the states; the log-decay gradient takes their row sums:
    # d gc_r = q_r . dq_r - k_r . dk_r (+ <dh_end, h_end> on the chunk's last step, with
    # <dh_end, h_end> = exp(gl) <dh_end, h> + sum_s k_s . dk_state_s), reverse-cumsummed within the chunk
    b_da = (tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC) * _causal_decay(b_gc, offs_t)).to(b_k.dtype)
    b_h = tl.load(hs + state_offs)  # (P, N) state before the chunk
    b_dq = tl.dot(b_da, b_k, input_precision=DOT_PREC)
    b_dq += tl.dot(b_do, b_h.to(b_do.dtype), input_precision=DOT_PREC) * tl.exp(b_gc)[:, None]
    b_dgc = tl.sum(b_q.to(tl.float32) * b_dq, axis=1)
    tl.store(dq + qk_offs, b_dq.to(dq.dtype.element_ty), mask=m_t[:, None])
    b_last = tl.exp(b_gl) * tl.sum(tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), axis=1), axis=0)

    b_kf = b_k.to(tl.float32)
    b_dk = tl.dot(b_v, b_dh.to(b_v.dtype), input_precision=DOT_PREC) * b_kdec[:, None]  # through the chunk's state
    b_last += tl.sum(tl.sum(b_kf * b_dk, axis=1), axis=0)
    b_dk += tl.dot(tl.trans(b_da), b_q, input_precision=DOT_PREC)
    b_dgc -= tl.sum(b_kf * b_dk, axis=1)
    tl.store(dk + qk_offs, b_dk.to(dk.dtype.element_ty), mask=m_t[:, None])
    b_dg = tl.cumsum(b_dgc, axis=0, reverse=True) + b_last
    tl.store(dg + g_offs, b_dg, mask=m_t)


# ---------------------------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------------------------


def _check(q: Tensor, k: Tensor, v: Tensor, g: Tensor, chunk_size: int) -> None:
    b, t, h, n = q.shape
    p = v.shape[-1]
    if k.shape != q.shape or v.shape[:3] != (b, t, h) or g.shape != (b, t, h):
        raise ValueError(f"shape mismatch: q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} g {tuple(g.shape)}")
    if n not in SUPPORTED_DIMS or p not in SUPPORTED_DIMS:
        raise ValueError(f"Triton GLA supports d_state and headdim in {SUPPORTED_DIMS}, got N={n}, P={p}")
    if chunk_size not in (16, 32, 64, 128):
        raise ValueError(f"Triton GLA supports chunk_size in (16, 32, 64, 128), got {chunk_size}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"q, k, v must share one dtype of bf16/fp16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")


# Launch parameters per kernel for N = P = 64, chunk 64, swept in GPU time on an H200 (benchmarks/kernel_configs.py,
# RESULTS.md). "bv": P-tile of the sequential state kernels (more programs for the serial chunk loop; the backward's
# walk is 0.019 ms faster at B 32, T 1024 with one 64-wide program per head than with two, and equal at B 8, T 4096).
# "chunks": chunks per program of the chunk-parallel kernels, which loop over them (1: no loop): with num_stages 3 the
# compiler's software pipeline loads the next chunk's tiles while this one computes. _bwd_dqkvg holds too many
# registers for more than a few programs per SM, so one chunk per program left its loads exposed: in the hybrid's
# training step (B 32, T 4096) 1.12 -> 0.85 ms a call. _fwd_output's 4-chunk loop took 0.72 ms there against the
# loop-free kernel's 0.60 (a loop of one iteration: 0.92), so it stays loop-free.
LAUNCH_CONFIG: dict[str, dict[str, int]] = {
    "fwd_states": {"bv": 64, "num_warps": 4, "num_stages": 2},
    "fwd_output": {"chunks": 1, "num_warps": 4, "num_stages": 1},
    "bwd_output_stage": {"num_warps": 4, "num_stages": 1},
    "bwd_states": {"bv": 64, "num_warps": 4, "num_stages": 2},
    "bwd_dqkvg": {"chunks": 2, "num_warps": 4, "num_stages": 3},
}


def _config(kernel: str, p: int) -> dict[str, int]:
    cfg = dict(LAUNCH_CONFIG[kernel])
    if "bv" in cfg:
        cfg["bv"] = min(cfg["bv"], p)
    return cfg


def _rows_of_heads(v: Tensor) -> Tensor:
    """v as is when each (b, t) row holds its H heads of P contiguously, at any row stride (the mixer's v is a column
    slice of the input projection's output: copying it cost two full passes over v per layer and step); else a
    contiguous copy. The kernels take the row stride (``s_vt``)."""
    b, t, h, p = v.shape
    if v.stride(3) == 1 and v.stride(2) == p and v.stride(1) >= h * p and v.stride(0) == t * v.stride(1):
        return v
    return v.contiguous()


def _launch_fwd_states(k: Tensor, v: Tensor, g: Tensor, h0: Tensor | None, bt: int) -> tuple[Tensor, Tensor]:
    b, t, h, n = k.shape
    p = v.shape[-1]
    nt = triton.cdiv(t, bt)
    cfg = _config("fwd_states", p)
    hs = k.new_empty(b, h, nt, p, n)
    ht = k.new_empty(b, h, p, n, dtype=torch.float32)
    _fwd_states[(p // cfg["bv"], b * h)](
        k, v, g, h0 if h0 is not None else ht, hs, ht, t, nt, v.stride(1),
        H=h, N=n, P=p, BT=bt, BV=cfg["bv"], HAS_H0=h0 is not None, DOT_PREC=dot_precision(k.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return hs, ht


def _output_stage(v_skip: Tensor | None, gate: Tensor | None, v: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """The optional output-stage operands as the kernels read them: v_skip ``[B, T, H]`` fp32 contiguous, the gate
    ``[B, T, H, P]`` at its row stride (the mixer's z is a column slice of the input projection, like v)."""
    if gate is not None and gate.shape != v.shape:
        raise ValueError(f"gate must have v's shape {tuple(v.shape)}, got {tuple(gate.shape)}")
    if v_skip is not None and v_skip.shape != v.shape[:3]:
        raise ValueError(f"v_skip must be (B, T, H) = {tuple(v.shape[:3])}, got {tuple(v_skip.shape)}")
    return (None if v_skip is None else v_skip.float().contiguous()), (None if gate is None else _rows_of_heads(gate))


def gla_chunk_fwd_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
    v_skip: Tensor | None = None,
    gate: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Forward of the GLA core with its output stage ``y = u * silu(gate)``, ``u = o + v_skip v`` (both optional).
    Returns (y ``[B, T, H, P]`` in v's dtype, final state ``[B, H, P, N]`` fp32, u in v's dtype for the backward
    when there is a gate, else an empty tensor, and the chunk states ``hs`` ``[B, H, NT, P, N]`` in the input dtype,
    which the backward takes instead of recomputing them)."""
    _check(q, k, v, g, chunk_size)
    interpreter_compat()
    q, k, v = q.contiguous(), k.contiguous(), _rows_of_heads(v)
    v_skip, gate = _output_stage(v_skip, gate, v)
    g = g.float().contiguous()
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    b, t, h, n = q.shape
    p = v.shape[-1]
    hs, ht = _launch_fwd_states(k, v, g, h0, chunk_size)
    nt = hs.shape[2]
    y = v.new_empty(v.shape)
    u = v.new_empty(v.shape if gate is not None else 0)
    cfg = _config("fwd_output", p)
    _fwd_output[(triton.cdiv(nt, cfg["chunks"]), b * h)](
        q, k, v, g, hs, g if v_skip is None else v_skip, v if gate is None else gate, y, y if gate is None else u,
        t, nt, v.stride(1), v.stride(1) if gate is None else gate.stride(1),
        H=h, N=n, P=p, BT=chunk_size, DOT_PREC=dot_precision(q.dtype), HAS_SKIP=v_skip is not None,
        HAS_Z=gate is not None, CHUNKS=cfg["chunks"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return y, ht, u, hs


def gla_chunk_bwd_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    initial_state: Tensor | None,
    dy: Tensor,
    dfinal_state: Tensor | None,
    chunk_size: int = 64,
    v_skip: Tensor | None = None,
    gate: Tensor | None = None,
    u: Tensor | None = None,
    hs: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Backward of :func:`gla_chunk_fwd_triton` (``u``: its third output, needed with a gate; ``hs``: its fourth, or
    None to recompute the chunk states). Returns (dq, dk, dv in the input dtype, dlog_decay fp32, dinitial_state
    fp32, dv_skip fp32 or None, dgate in the gate's dtype or None)."""
    _check(q, k, v, g, chunk_size)
    interpreter_compat()
    q, k, v = q.contiguous(), k.contiguous(), _rows_of_heads(v)
    v_skip, gate = _output_stage(v_skip, gate, v)
    if gate is not None and (u is None or u.shape != v.shape):
        raise ValueError("the backward with a gate needs u, the forward's ungated output (its third output)")
    dy = dy.to(v.dtype).contiguous()
    g = g.float().contiguous()
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    dht = dfinal_state.float().contiguous() if dfinal_state is not None else None
    b, t, h, n = q.shape
    p = v.shape[-1]
    prec = dot_precision(q.dtype)
    nt = triton.cdiv(t, chunk_size)
    if hs is None:
        hs, _ = _launch_fwd_states(k, v, g, h0, chunk_size)
    elif hs.shape != (b, h, nt, p, n) or hs.dtype != k.dtype:
        raise ValueError(f"hs must be the forward's chunk states {(b, h, nt, p, n)} {k.dtype}, got {tuple(hs.shape)}")
    hs = hs.contiguous()
    dskip = None if v_skip is None else torch.empty_like(v_skip)
    dz = None if gate is None else gate.new_empty(gate.shape)
    do = dy
    if v_skip is not None or gate is not None:
        do = torch.empty_like(dy)
        cfg = _config("bwd_output_stage", p)
        _bwd_output_stage[(nt, b * h)](
            v, g if v_skip is None else v_skip, v if gate is None else gate, dy if gate is None else u.to(v.dtype),
            dy, do, g if dskip is None else dskip, dy if dz is None else dz,
            t, v.stride(1), v.stride(1) if gate is None else gate.stride(1),
            H=h, P=p, BT=chunk_size, HAS_SKIP=v_skip is not None, HAS_Z=gate is not None,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
    cfg = _config("bwd_states", p)
    dhs = torch.empty_like(hs)
    dh0 = q.new_empty(b, h, p, n, dtype=torch.float32)
    _bwd_states[(p // cfg["bv"], b * h)](
        q, do, g, dht if dht is not None else dh0, dhs, dh0, t, nt,
        H=h, N=n, P=p, BT=chunk_size, BV=cfg["bv"], HAS_DHT=dht is not None, DOT_PREC=prec,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), v.new_empty(v.shape)
    dg = torch.empty_like(g)
    cfg = _config("bwd_dqkvg", p)
    _bwd_dqkvg[(triton.cdiv(nt, cfg["chunks"]), b * h)](
        q, k, v, g, hs, dhs, g if v_skip is None else v_skip, do, dq, dk, dv, dg, t, nt, v.stride(1),
        H=h, N=n, P=p, BT=chunk_size, DOT_PREC=prec, HAS_SKIP=v_skip is not None, CHUNKS=cfg["chunks"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return dq, dk, dv, dg, dh0, dskip, dz
