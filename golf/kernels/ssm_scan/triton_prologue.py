"""Triton forward and backward of the Mamba-3 SISO prologue on the training path (no initial state).

Forward, per (b, t, h), in fp32 (math and PyTorch twin: ``mamba3_prologue_reference`` in ``reference.py``)::

    theta_t = sum_{s<=t} dt_s angles_s                    qb = q + q_bias,  kb = k + k_bias
    q~ = rot(qb, theta_t),  k~ = rot(kb, theta_t)          bn_t = (1 - trap_{t+1}) dt_{t+1}  (0 at t = T-1)
    w_t = trap_t dt_t + bn_t                               diag_t = bn_t (qb . kb)
    outputs: q~ and k~ w in the kernel dtype, diag fp32

Design (bandwidth-bound: at B 8, T 4096, H 16, N 64 one bf16 ``[B, T, H, N]`` tensor is 67 MB, the rest is small):

* The only sequential dependency is the angle cumsum, and it is cheap: ``_theta_block_sums`` (grid (NT/CB, B*H),
  reading only dt and angles) sums dt * angles over every T-block of BT steps and ``_block_scan`` (grid B*H,
  128 blocks per step) turns the sums into theta at every block's start (``[B, H, NT, RP]`` fp32, RP the power of
  2 >= R: 4 MB at BT 8). The forward returns it and the backward reads it (not rescanned).
* The heavy kernels are then fully parallel over (T-block, b, group) -- grid (NT, B*G), 4096 programs at the shape
  above -- instead of one program per (b, h) walking all of T, which would leave 128 programs each stalling on a
  T/BT-step chain of loads. Inside a program a loop runs over the H/G heads that share the group's q, k, so for
  G = 1 q and k are read once per block and the head sums of dq, dk are accumulated in registers (deterministic,
  no atomics, no per-head fp32 copies).
* Angle gradient: ``dtheta = g1 y0 - g0 y1`` per rotated pair (q and k contributions), then dangles = dt * (reverse
  cumsum over T of dtheta) and ddt += sum_r angles * (reverse cumsum). ``_prologue_bwd`` writes the raw dtheta (into
  the dangles buffer) and each block's total; ``_block_scan`` turns the totals into the sum over the later blocks;
  ``_prologue_bwd_fix`` (grid NT, B*H/HB) takes the in-block reverse cumsum, adds that sum, and the shifted trapezoid
  term (bn_t depends on step t+1, whose gradient crosses block edges). Two passes cost one extra read+write of the
  fp32 ``[B, T, H, R]`` buffer (34 MB each way at R = 16) and avoid a sequential backward; the scan sits in the light
  kernel because the heavy one, which loops over the heads, paid for it in every head (measured:
  ``benchmarks/RESULTS.md``).
* Rotation pairs (2j, 2j+1) are handled by loading contiguous ``[BT, N]`` rows and splitting them with
  ``reshape + split`` (joined back before the store), so loads and stores stay contiguous. Theta is kept for all
  N/2 pairs with the angles of pairs j >= R masked to 0, so those pairs rotate by exactly 0 (cos 1, sin 0).

Bytes at the shape above, bf16, G = 1, R = 16, angles shared by heads (the module passes a stride-0 ``expand``; the
kernels take angles' strides, so the view is never materialised): forward reads q, k (8 MB) + dt, trap, angles
(~6 MB) and writes q~, k~w (134 MB) + diag (2 MB) -- about 150 MB. Backward reads dq~, dk~w (134 MB) + q, k (8 MB)
+ small, writes dq, dk (8 MB), writes the dangles buffer twice and reads it once (34 MB each), and writes per-block
partials of the bias gradients (34 MB at BT 8, summed over (B, NT) in PyTorch) -- about 300 MB. At ~3 TB/s that is
~50 us forward and ~100 us backward; measured on an H200 (RESULTS.md): 71 us for the forward's heavy kernel, 151 + 33
us for the backward's two, against ~1.7 ms measured on an H100 for the Inductor code this replaces (bias, rotation,
angle cumsums, forward + backward).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from golf.kernels.triton_util import interpreter_compat, interpreting

__all__ = ["mamba3_prologue_bwd_triton", "mamba3_prologue_fwd_triton", "theta_carry_shape"]

# Launch parameters (BT: T-block of the parallel kernels; CB: T-blocks per program of the angle block sums;
# num_warps: the light kernels (block sums and scans, the backward's fix kernel); fwd_num_warps / bwd_num_warps: the
# forward and backward heavy kernels; bwd_maxnreg: a register cap for the backward, 0 = the compiler's choice;
# fast_trig: 1 = the GPU's approximate cos/sin, see _cos_sin; fix_heads: heads per program of the fix kernel, a power
# of 2, capped to gcd(H, fix_heads)). Measured in GPU time on an H200 (benchmarks/kernel_configs.py --groups prologue,
# RESULTS.md): one warp per program over BT 8 rows for every kernel -- the per-head reductions and the in-block
# cumsum then stay inside one warp (no block-wide barriers), and 4096 small programs at B 32, T 1024 keep the SMs
# fed (the backward heavy kernel: 0.244 ms at BT 32 / 4 warps, 0.151 ms here); the approximate trig saves a further
# ~0.09 ms per backward at B 8, T 4096; the fix kernel takes 8 heads per program (0.058 -> 0.033 ms).
# bwd_prefetch: 1 = the backward loads the next head's gradient rows while this head computes (254 registers instead
# of 225, still 8 programs per SM; 0.542 -> 0.500 ms a call at B 32, T 4096, the whole op 3.310 -> 3.268 ms fwd+bwd).
LAUNCH_CONFIG: dict[str, int] = {"bt": 8, "cb": 8, "num_warps": 1, "fwd_num_warps": 1, "bwd_num_warps": 1,
                                 "bwd_maxnreg": 0, "fast_trig": 1, "fix_heads": 8, "bwd_prefetch": 1}
# T-blocks per step of ``_block_scan`` (4 steps at T 4096, BT 8; a [128, RP 16] tile is 64 values per thread of the
# one warp).
SCAN_BLOCKS = 128


# ---------------------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _theta_block_sums(
    dt, angles, blk,
    T, NT, s_ab, s_at, s_ah, s_ar,
    H: tl.constexpr, R: tl.constexpr, RP: tl.constexpr, BT: tl.constexpr, CB: tl.constexpr,
):  # fmt: skip
    """blk[b, h, c, j] = sum of dt * angles[..., j] over T-block c (0 for R <= j < RP), CB blocks per program;
    ``_block_scan`` then turns the sums into theta at every block's start."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    offs_j = tl.arange(0, RP)
    rows = i_c * CB * BT + tl.arange(0, CB * BT)
    m_t = rows < T
    b_dt = tl.load(dt + (i_b * T + rows) * H + i_h, mask=m_t, other=0.0)
    a_offs = i_b * s_ab + rows[:, None] * s_at + i_h * s_ah + offs_j[None, :] * s_ar
    b_a = tl.load(angles + a_offs, mask=m_t[:, None] & (offs_j < R)[None, :], other=0.0)
    b_blk = tl.sum(tl.reshape(b_dt[:, None] * b_a, [CB, BT, RP]), axis=1)
    blocks = i_c * CB + tl.arange(0, CB)
    tl.store(blk + (i_bh.to(tl.int64) * NT + blocks[:, None]) * RP + offs_j[None, :], b_blk,
             mask=(blocks < NT)[:, None])  # fmt: skip


@triton.jit
def _block_scan(blk, NT, RP: tl.constexpr, SB: tl.constexpr, REVERSE: tl.constexpr):
    """In place, per (b, h), over the T-blocks of ``[B, H, NT, RP]`` block totals: the exclusive scan, i.e. the sum
    over the earlier blocks (theta at each block's start) or, with REVERSE, over the later ones (the angle
    gradient carried into a block). SB blocks per step (4 steps at T 4096, BT 8): the T-parallel kernels
    read their carry as one vector instead of walking T (a loop over the later blocks in every program of the
    backward's fix kernel was quadratic in T; a walk over T per (b, h) in the forward left most SMs idle)."""
    i_bh = tl.program_id(0).to(tl.int64)
    offs_j = tl.arange(0, RP)
    offs_c = tl.arange(0, SB)
    b_carry = tl.zeros([RP], dtype=tl.float32)
    for c0 in range(0, NT, SB):
        if REVERSE:
            blocks = NT - 1 - c0 - offs_c
        else:
            blocks = c0 + offs_c
        m_c = ((blocks >= 0) & (blocks < NT))[:, None]
        ptrs = blk + (i_bh * NT + blocks[:, None]) * RP + offs_j[None, :]
        b_blk = tl.load(ptrs, mask=m_c, other=0.0)
        tl.store(ptrs, tl.cumsum(b_blk, axis=0) - b_blk + b_carry[None, :], mask=m_c)
        b_carry += tl.sum(b_blk, axis=0)


@triton.jit
def _qk_block(q, k, T, G: tl.constexpr, N: tl.constexpr, BT: tl.constexpr):
    """This program's T-block of one (b, group): ids, rows and their mask, q/k offsets, and q, k in fp32 (BT, N)."""
    i_t, i_bg = tl.program_id(0), tl.program_id(1)
    i_b, i_g = (i_bg // G).to(tl.int64), i_bg % G
    rows = i_t * BT + tl.arange(0, BT)
    m_t = rows < T
    offs_n = tl.arange(0, N)
    qk_offs = ((i_b * T + rows) * G + i_g)[:, None] * N + offs_n[None, :]
    b_q = tl.load(q + qk_offs, mask=m_t[:, None], other=0.0).to(tl.float32)
    b_k = tl.load(k + qk_offs, mask=m_t[:, None], other=0.0).to(tl.float32)
    return i_t, i_b, i_g, rows, m_t, offs_n, qk_offs, b_q, b_k


@triton.jit
def _cos_sin(theta, FAST: tl.constexpr):
    """cos and sin of fp32 ``theta``. FAST: the GPU's approximate ``cos.approx``/``sin.approx`` (one instruction each,
    absolute error ~1e-6 on [-pi, pi]) after reducing theta by the nearest multiple of 2 pi (2 pi in two parts, the
    first exact in k * 6.28125); else libdevice's accurate cosf/sinf. The interpreter cannot run PTX: FAST is off
    there."""
    if FAST:
        k = tl.floor(theta * 0.15915494309189535 + 0.5)
        r = theta - k * 6.28125 - k * 0.0019353071795864769
        cos = tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=f,f", [r], dtype=tl.float32, is_pure=True, pack=1)
        sin = tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=f,f", [r], dtype=tl.float32, is_pure=True, pack=1)
    else:
        cos, sin = tl.cos(theta), tl.sin(theta)
    return cos, sin


@triton.jit
def _head_step(
    dt, trap, angles, carry, q_bias, k_bias, b_q, b_k, offs_n, i_b, i_h, i_t, rows, m_t, T, NT, s_ab, s_at, s_ah, s_ar,
    H: tl.constexpr, N: tl.constexpr, R: tl.constexpr, RP: tl.constexpr, BT: tl.constexpr, HAS_ROT: tl.constexpr,
    FAST_TRIG: tl.constexpr,
):  # fmt: skip
    """One head's inputs on the block: dt, trap, bn = (1 - trap_{t+1}) dt_{t+1}, cos/sin of theta (BT, N/2), the
    biased q, k and the trapezoid weight w."""
    NH: tl.constexpr = N // 2
    offs = (i_b * T + rows) * H + i_h
    b_dt = tl.load(dt + offs, mask=m_t, other=0.0)
    b_trap = tl.load(trap + offs, mask=m_t, other=0.0)
    m_n = rows + 1 < T
    b_bn = (1.0 - tl.load(trap + offs + H, mask=m_n, other=1.0)) * tl.load(dt + offs + H, mask=m_n, other=0.0)
    offs_j = tl.arange(0, NH)
    if HAS_ROT:
        a_offs = i_b * s_ab + rows[:, None] * s_at + i_h * s_ah + offs_j[None, :] * s_ar
        b_a = tl.load(angles + a_offs, mask=m_t[:, None] & (offs_j < R)[None, :], other=0.0)
        b_c0 = tl.load(carry + ((i_b * H + i_h) * NT + i_t) * RP + offs_j, mask=offs_j < RP, other=0.0)
        b_theta = tl.cumsum(b_dt[:, None] * b_a, axis=0) + b_c0[None, :]
        b_cos, b_sin = _cos_sin(b_theta, FAST_TRIG)
    else:  # unused
        b_cos = tl.full([BT, NH], 1.0, dtype=tl.float32)
        b_sin = tl.zeros([BT, NH], dtype=tl.float32)
    b_qb = b_q + tl.load(q_bias + i_h * N + offs_n)[None, :]
    b_kb = b_k + tl.load(k_bias + i_h * N + offs_n)[None, :]
    return b_dt, b_trap, b_bn, b_cos, b_sin, b_qb, b_kb, b_trap * b_dt + b_bn


@triton.jit
def _rot(x, c, s, BT: tl.constexpr, NH: tl.constexpr):
    """Rotate the adjacent pairs of the (BT, 2 NH) tile x by the angles of (c, s) = (cos, sin), each (BT, NH)."""
    x0, x1 = tl.split(tl.reshape(x, [BT, NH, 2]))
    return tl.reshape(tl.join(x0 * c - x1 * s, x0 * s + x1 * c), [BT, 2 * NH])


@triton.jit
def _pair_cross(g, y, BT: tl.constexpr, NH: tl.constexpr):
    """Per pair: ``g1 y0 - g0 y1``, the theta-derivative of ``g . rot(x, theta)`` where ``y = rot(x, theta)``."""
    g0, g1 = tl.split(tl.reshape(g, [BT, NH, 2]))
    y0, y1 = tl.split(tl.reshape(y, [BT, NH, 2]))
    return g1 * y0 - g0 * y1


@triton.jit
def _prologue_fwd(
    q, k, dt, trap, q_bias, k_bias, angles, carry, q_rot, k_w, diag,
    T, NT, s_ab, s_at, s_ah, s_ar,
    H: tl.constexpr, G: tl.constexpr, N: tl.constexpr, R: tl.constexpr, RP: tl.constexpr, BT: tl.constexpr,
    HAS_ROT: tl.constexpr, FAST_TRIG: tl.constexpr,
):  # fmt: skip
    HPG: tl.constexpr = H // G
    NH: tl.constexpr = N // 2
    i_t, i_b, i_g, rows, m_t, offs_n, qk_offs, b_q, b_k = _qk_block(q, k, T, G, N, BT)
    for i in range(HPG):
        i_h = i_g * HPG + i
        _, _, b_bn, b_cos, b_sin, b_qb, b_kb, b_w = _head_step(
            dt, trap, angles, carry, q_bias, k_bias, b_q, b_k, offs_n, i_b, i_h, i_t, rows, m_t, T, NT,
            s_ab, s_at, s_ah, s_ar, H, N, R, RP, BT, HAS_ROT, FAST_TRIG,
        )  # fmt: skip
        b_qr, b_kr = b_qb, b_kb
        if HAS_ROT:
            b_qr, b_kr = _rot(b_qb, b_cos, b_sin, BT, NH), _rot(b_kb, b_cos, b_sin, BT, NH)
        offs = (i_b * T + rows) * H + i_h
        out_offs = offs[:, None] * N + offs_n[None, :]
        tl.store(q_rot + out_offs, b_qr.to(q_rot.dtype.element_ty), mask=m_t[:, None])
        tl.store(k_w + out_offs, (b_kr * b_w[:, None]).to(k_w.dtype.element_ty), mask=m_t[:, None])
        tl.store(diag + offs, b_bn * tl.sum(b_qb * b_kb, axis=1), mask=m_t)


@triton.jit
def _prologue_bwd(
    q, k, dt, trap, q_bias, k_bias, angles, carry, dq_rot, dk_w, ddiag,
    dq, dk, ddt, dtrap, dbn, dang, dang_blk, dq_bias, dk_bias,
    T, NT, s_ab, s_at, s_ah, s_ar,
    H: tl.constexpr, G: tl.constexpr, N: tl.constexpr, R: tl.constexpr, RP: tl.constexpr, BT: tl.constexpr,
    HAS_ROT: tl.constexpr, HAS_DDIAG: tl.constexpr, FAST_TRIG: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    """Everything local to a T-block; the cross-block terms (angle carry, step t+1 -> t shift) are left to
    ``_prologue_bwd_fix``. Writes ddt/dtrap without those terms, dbn, dtheta and its block total, per-block
    bias-gradient partials ``[B * NT, H, N]``, and dq, dk summed over the group's heads. PREFETCH: the next head's
    dq~, dk~ w rows are loaded while this head computes (a register double buffer: the compiler's software pipeline
    does not take loads that feed no dot, ``kernel_registers.py`` shows no shared memory for them)."""
    HPG: tl.constexpr = H // G
    NH: tl.constexpr = N // 2
    i_t, i_b, i_g, rows, m_t, offs_n, qk_offs, b_q, b_k = _qk_block(q, k, T, G, N, BT)
    offs_j = tl.arange(0, NH)
    m_j = offs_j < R
    b_dq = tl.zeros([BT, N], dtype=tl.float32)
    b_dk = tl.zeros([BT, N], dtype=tl.float32)
    if PREFETCH:
        first = ((i_b * T + rows) * H + i_g * HPG)[:, None] * N + offs_n[None, :]
        b_gq_next = tl.load(dq_rot + first, mask=m_t[:, None], other=0.0)
        b_gk_next = tl.load(dk_w + first, mask=m_t[:, None], other=0.0)
    for i in range(HPG):
        i_h = i_g * HPG + i
        b_dt, b_trap, b_bn, b_cos, b_sin, b_qb, b_kb, b_w = _head_step(
            dt, trap, angles, carry, q_bias, k_bias, b_q, b_k, offs_n, i_b, i_h, i_t, rows, m_t, T, NT,
            s_ab, s_at, s_ah, s_ar, H, N, R, RP, BT, HAS_ROT, FAST_TRIG,
        )  # fmt: skip
        offs = (i_b * T + rows) * H + i_h
        g_offs = offs[:, None] * N + offs_n[None, :]
        if PREFETCH:
            b_gq, b_gk = b_gq_next.to(tl.float32), b_gk_next.to(tl.float32)
            m_next = m_t[:, None] & (i + 1 < HPG)  # the next head's rows sit N further along
            b_gq_next = tl.load(dq_rot + g_offs + N, mask=m_next, other=0.0)
            b_gk_next = tl.load(dk_w + g_offs + N, mask=m_next, other=0.0)
        else:
            b_gq = tl.load(dq_rot + g_offs, mask=m_t[:, None], other=0.0).to(tl.float32)
            b_gk = tl.load(dk_w + g_offs, mask=m_t[:, None], other=0.0).to(tl.float32)
        if HAS_DDIAG:
            b_gd = tl.load(ddiag + offs, mask=m_t, other=0.0)
        else:
            b_gd = tl.zeros([BT], dtype=tl.float32)
        b_gkr = b_gk * b_w[:, None]  # gradient of the rotated k
        if HAS_ROT:
            b_qr, b_kr = _rot(b_qb, b_cos, b_sin, BT, NH), _rot(b_kb, b_cos, b_sin, BT, NH)
            # transposed rotation (by -theta) of the gradients
            b_dqb, b_dkb = _rot(b_gq, b_cos, -b_sin, BT, NH), _rot(b_gkr, b_cos, -b_sin, BT, NH)
            b_dth = _pair_cross(b_gq, b_qr, BT, NH) + _pair_cross(b_gkr, b_kr, BT, NH)
            b_dth = tl.where(m_j[None, :], b_dth, 0.0)  # pairs j >= R are not rotated
            tl.store(dang + offs[:, None] * R + offs_j[None, :], b_dth, mask=m_t[:, None] & m_j[None, :])
            blk_offs = ((i_b * H + i_h) * NT + i_t) * RP + offs_j
            tl.store(dang_blk + blk_offs, tl.sum(b_dth, axis=0), mask=offs_j < RP)
        else:
            b_kr, b_dqb, b_dkb = b_kb, b_gq, b_gkr
        b_dw = tl.sum(b_gk * b_kr, axis=1)
        b_gdbn = b_gd * b_bn
        b_dqb += b_gdbn[:, None] * b_kb
        b_dkb += b_gdbn[:, None] * b_qb
        b_dq += b_dqb
        b_dk += b_dkb
        tl.store(ddt + offs, b_dw * b_trap, mask=m_t)
        tl.store(dtrap + offs, b_dw * b_dt, mask=m_t)
        tl.store(dbn + offs, b_dw + b_gd * tl.sum(b_qb * b_kb, axis=1), mask=m_t)
        bias_offs = ((i_b * NT + i_t) * H + i_h) * N + offs_n
        tl.store(dq_bias + bias_offs, tl.sum(b_dqb, axis=0))
        tl.store(dk_bias + bias_offs, tl.sum(b_dkb, axis=0))
    tl.store(dq + qk_offs, b_dq.to(dq.dtype.element_ty), mask=m_t[:, None])
    tl.store(dk + qk_offs, b_dk.to(dk.dtype.element_ty), mask=m_t[:, None])


@triton.jit
def _prologue_bwd_fix(
    dt, trap, angles, dbn, dang, dang_later, ddt, dtrap,
    T, NT, s_ab, s_at, s_ah, s_ar,
    H: tl.constexpr, R: tl.constexpr, RP: tl.constexpr, BT: tl.constexpr, HB: tl.constexpr, HAS_ROT: tl.constexpr,
):  # fmt: skip
    """Cross-block terms: bn_{t-1} = (1 - trap_t) dt_t feeds dtrap_t, ddt_t; the reverse cumsum of dtheta, in the
    block and carried from later blocks (``dang_later``: their summed totals, from ``_block_scan``). HB adjacent heads
    per program, so that each row of the ``[B, T, H]`` and ``[B, T, H, R]`` buffers is read as HB (x R) contiguous
    values rather than one head's 4 bytes; the angle axis padded to RP, the power of 2 >= R."""
    i_t, i_bg = tl.program_id(0), tl.program_id(1)
    i_b, i_g = (i_bg // (H // HB)).to(tl.int64), i_bg % (H // HB)
    rows = i_t * BT + tl.arange(0, BT)
    m_t = (rows < T)[:, None]
    offs_h = i_g * HB + tl.arange(0, HB)
    offs = (i_b * T + rows)[:, None] * H + offs_h[None, :]  # (BT, HB)
    b_dt = tl.load(dt + offs, mask=m_t, other=0.0)
    b_trap = tl.load(trap + offs, mask=m_t, other=0.0)
    b_dbn_prev = tl.load(dbn + offs - H, mask=m_t & (rows > 0)[:, None], other=0.0)
    b_ddt = tl.load(ddt + offs, mask=m_t, other=0.0) + b_dbn_prev * (1.0 - b_trap)
    b_dtrap = tl.load(dtrap + offs, mask=m_t, other=0.0) - b_dbn_prev * b_dt
    if HAS_ROT:
        offs_j = tl.arange(0, RP)
        m_a = m_t[:, :, None] & (offs_j < R)[None, None, :]  # (BT, 1, RP)
        b_carry = tl.load(dang_later + ((i_b * H + offs_h)[:, None] * NT + i_t) * RP + offs_j[None, :])  # (HB, RP)
        a_offs = (i_b * s_ab + rows[:, None, None] * s_at + offs_h[None, :, None] * s_ah
                  + offs_j[None, None, :] * s_ar)  # fmt: skip
        b_a = tl.load(angles + a_offs, mask=m_a, other=0.0)
        g_offs = offs[:, :, None] * R + offs_j[None, None, :]
        b_rc = tl.cumsum(tl.load(dang + g_offs, mask=m_a, other=0.0), axis=0, reverse=True) + b_carry[None, :, :]
        b_ddt += tl.sum(b_rc * b_a, axis=2)
        tl.store(dang + g_offs, b_dt[:, :, None] * b_rc, mask=m_a)
    tl.store(ddt + offs, b_ddt, mask=m_t)
    tl.store(dtrap + offs, b_dtrap, mask=m_t)


# ---------------------------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------------------------


def _prepare(q, k, dt, trap, q_bias, k_bias, angles):
    """Both launchers' set-up: the inputs (contiguous, fp32 side inputs; angles keep their strides, so a stride-0
    head ``expand`` is read as is) and the sizes ``(B, T, G, N, H, R, NT)``."""
    interpreter_compat()
    g, n = q.shape[2:]
    h, r = dt.shape[2], angles.shape[3]
    if k.shape != q.shape or h % g or n & (n - 1) or n < 2 or 2 * r > n:
        raise ValueError(f"Triton prologue: q, k (B, T, G, N), G | H, N a power of 2, R <= N/2; got q {tuple(q.shape)}"
                         f" k {tuple(k.shape)} H {h} R {r}")  # fmt: skip
    f32 = torch.float32
    inputs = (
        q.contiguous(), k.contiguous(), dt.to(f32).contiguous(), trap.to(f32).contiguous(),
        q_bias.to(f32).contiguous(), k_bias.to(f32).contiguous(), angles.to(f32),
    )  # fmt: skip
    b, t = q.shape[:2]
    return inputs, (b, t, g, n, h, r, triton.cdiv(t, LAUNCH_CONFIG["bt"]))


def _fast_trig() -> bool:
    """LAUNCH_CONFIG["fast_trig"], except under TRITON_INTERPRET and on ROCm (the approximate cos/sin are PTX)."""
    return bool(LAUNCH_CONFIG["fast_trig"]) and not interpreting() and torch.version.hip is None


def _register_cap(maxnreg: int) -> dict[str, int]:
    """Triton's ``maxnreg`` launch option when a cap is set (fewer registers per thread, more programs per SM)."""
    return {"maxnreg": maxnreg} if maxnreg else {}


def _angle_width(n_angles: int) -> int:
    """RP: the angle axis of the block totals and carries, padded to a power of 2 (pairs j >= R never rotate, so the
    N/2 - RP pairs above it are not stored; the heavy kernels read them as 0)."""
    return triton.next_power_of_2(max(n_angles, 1))


def theta_carry_shape(batch: int, seqlen: int, nheads: int, n_angles: int) -> tuple[int, ...]:
    """Shape of theta at the start of every T-block, ``[B, H, NT, RP]`` (NT from ``LAUNCH_CONFIG["bt"]``, RP the
    power of 2 >= R), which the forward returns for the backward; ``(0,)`` without angles (nothing rotates)."""
    if n_angles == 0:
        return (0,)
    return (batch, nheads, triton.cdiv(seqlen, LAUNCH_CONFIG["bt"]), _angle_width(n_angles))


def _theta_carries(dt: Tensor, angles: Tensor) -> Tensor:
    """theta at the start of every T-block (:func:`theta_carry_shape`, fp32; empty when R == 0)."""
    b, t, h, r = angles.shape
    carry = dt.new_empty(theta_carry_shape(b, t, h, r))
    if r:
        nt, cb, rp = carry.shape[2], LAUNCH_CONFIG["cb"], carry.shape[3]
        _theta_block_sums[(triton.cdiv(nt, cb), b * h)](
            dt, angles, carry, t, nt, *angles.stride(), H=h, R=r, RP=rp, BT=LAUNCH_CONFIG["bt"], CB=cb,
            num_warps=LAUNCH_CONFIG["num_warps"],
        )  # fmt: skip
        _block_scan[(b * h,)](carry, nt, RP=rp, SB=SCAN_BLOCKS, REVERSE=False, num_warps=LAUNCH_CONFIG["num_warps"])
    return carry


def mamba3_prologue_fwd_triton(
    q: Tensor, k: Tensor, dt: Tensor, trap: Tensor, q_bias: Tensor, k_bias: Tensor, angles: Tensor,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Returns (q~ ``[B, T, H, N]``, k~ w ``[B, T, H, N]`` in ``out_dtype``, diag ``[B, T, H]`` fp32, and theta at the
    start of every T-block (:func:`theta_carry_shape`, fp32), which the backward takes instead of rescanning T)."""
    (q, k, dt, trap, q_bias, k_bias, angles), (b, t, g, n, h, r, nt) = _prepare(q, k, dt, trap, q_bias, k_bias, angles)
    carry = _theta_carries(dt, angles)
    q_rot = q.new_empty(b, t, h, n, dtype=out_dtype)
    k_w = torch.empty_like(q_rot)
    diag = dt.new_empty(b, t, h)
    _prologue_fwd[(nt, b * g)](
        q, k, dt, trap, q_bias, k_bias, angles, carry if r else dt, q_rot, k_w, diag, t, nt, *angles.stride(),
        H=h, G=g, N=n, R=r, RP=_angle_width(r), BT=LAUNCH_CONFIG["bt"], HAS_ROT=r > 0, FAST_TRIG=_fast_trig(),
        num_warps=LAUNCH_CONFIG["fwd_num_warps"],
    )  # fmt: skip
    return q_rot, k_w, diag, carry


def mamba3_prologue_bwd_triton(
    q: Tensor, k: Tensor, dt: Tensor, trap: Tensor, q_bias: Tensor, k_bias: Tensor, angles: Tensor,
    dq_rot: Tensor, dk_w: Tensor, ddiag: Tensor | None, carry: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Returns (dq, dk ``[B, T, G, N]`` in q's/k's dtype; ddt, dtrap ``[B, T, H]``, dq_bias, dk_bias ``[H, N]``,
    dangles ``[B, T, H, R]`` in fp32; the op casts them to the inputs' dtypes). ``carry``: the forward's fourth
    output, or None to recompute it."""
    (q, k, dt, trap, q_bias, k_bias, angles), (b, t, g, n, h, r, nt) = _prepare(q, k, dt, trap, q_bias, k_bias, angles)
    if carry is None:
        carry = _theta_carries(dt, angles)
    elif carry.shape != theta_carry_shape(b, t, h, r) or carry.dtype != torch.float32:
        raise ValueError(f"carry must be the forward's theta carries {theta_carry_shape(b, t, h, r)} fp32, got "
                         f"{tuple(carry.shape)} {carry.dtype}")  # fmt: skip
    bt, rp = LAUNCH_CONFIG["bt"], _angle_width(r)
    dq_rot, dk_w = dq_rot.contiguous(), dk_w.contiguous()
    ddiag = ddiag.float().contiguous() if ddiag is not None else None
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    ddt, dtrap, dbn = (torch.empty_like(dt) for _ in range(3))
    dang = dt.new_empty(b, t, h, r)
    dang_buf, dang_blk = (dang, dt.new_empty(b, h, nt, rp)) if r else (dt, dt)  # R == 0: unused dummies
    dq_bias_part, dk_bias_part = (dt.new_empty(b * nt, h, n) for _ in range(2))  # per-block partials
    _prologue_bwd[(nt, b * g)](
        q, k, dt, trap, q_bias, k_bias, angles, carry if r else dt, dq_rot, dk_w, ddiag if ddiag is not None else dt,
        dq, dk, ddt, dtrap, dbn, dang_buf, dang_blk, dq_bias_part, dk_bias_part, t, nt, *angles.stride(),
        H=h, G=g, N=n, R=r, RP=rp, BT=bt, HAS_ROT=r > 0, HAS_DDIAG=ddiag is not None, FAST_TRIG=_fast_trig(),
        PREFETCH=bool(LAUNCH_CONFIG["bwd_prefetch"]), num_warps=LAUNCH_CONFIG["bwd_num_warps"],
        **_register_cap(LAUNCH_CONFIG["bwd_maxnreg"]),
    )  # fmt: skip
    # summed straight after the kernel that wrote them, while the 2 x 17 MB of partials (B 32, T 1024, BT 8) may
    # still sit in L2, before the fix kernel streams the dangles buffer through it
    dq_bias, dk_bias = dq_bias_part.sum(0), dk_bias_part.sum(0)
    if r:
        _block_scan[(b * h,)](dang_blk, nt, RP=rp, SB=SCAN_BLOCKS, REVERSE=True,
                              num_warps=LAUNCH_CONFIG["num_warps"])  # fmt: skip
    hb = math.gcd(h, LAUNCH_CONFIG["fix_heads"])
    _prologue_bwd_fix[(nt, b * h // hb)](
        dt, trap, angles, dbn, dang_buf, dang_blk, ddt, dtrap, t, nt, *angles.stride(),
        H=h, R=r, RP=rp, BT=bt, HB=hb, HAS_ROT=r > 0,
        num_warps=LAUNCH_CONFIG["num_warps"],
    )  # fmt: skip
    return dq, dk, ddt, dtrap, dq_bias, dk_bias, dang
