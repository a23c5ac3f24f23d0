r"""Pure-PyTorch references for the Mamba-3 SISO scan (no Triton import).

The definition (per batch b, head h, step t = 1..T; state S is P x N, fp32)
--------------------------------------------------------------------------
Inputs, already projected and normalised by the caller:

* ``q_t, k_t`` in R^N (N = d_state), ``v_t`` in R^P (P = headdim), ``z_t`` in R^P (optional gate),
* ``adt_t = Delta_t * A_t <= 0``, ``dt_t = Delta_t > 0``, ``trap_t = lambda_t`` in (0, 1),
* ``angles_t`` in R^R (rotation rates, R <= N / 2), ``q_bias, k_bias`` in R^{H x N}, ``D`` in R^H.

Recurrence::

    theta_t = theta_{t-1} + Delta_t * angles_t                      (theta_0: initial angle state or 0)
    q~_t    = rot(q_t + q_bias, theta_t),  k~_t = rot(k_t + k_bias, theta_t)
    alpha_t = exp(adt_t),  beta_t = (1 - lambda_t) Delta_t alpha_t,  gamma_t = lambda_t Delta_t
    S_t     = alpha_t S_{t-1} + beta_t v_{t-1} k~_{t-1}^T + gamma_t v_t k~_t^T   (S_0, k~_0, v_0: initial state or 0)
    y_t     = S_t q~_t + D v_t;   y_t <- y_t * z_t * sigmoid(z_t)   if z is given
    final state = (theta_T mod 2 pi, S_T, k~_T, v_T)

``rot(x, theta)`` rotates the adjacent pairs (x_{2j}, x_{2j+1}) by theta[j] for j < R
(``x0' = x0 cos - x1 sin``, ``x1' = x0 sin + x1 cos``, the convention of state-spaces/mamba); the
remaining N - 2R dims are left alone.

Chunked ("simple GLA") form
---------------------------
Unrolling the recurrence with ``cA_t = sum_{r<=t} adt_r``: the pair (v_s, k~_s) enters S_t (s < t) with weight
``exp(cA_t - cA_s) w_s`` where ``w_s = gamma_s + (1 - lambda_{s+1}) Delta_{s+1}`` (the beta term of step s+1,
whose alpha_{s+1} cancels one decay), with ``w_T = gamma_T`` for the last step; on the diagonal (s = t) the
weight is only gamma_t. A carried-in state enters as ``S_0' = S_0 + (1 - lambda_1) Delta_1 v_0 k~_0^T``. So::

    y_t = sum_{s<=t} exp(cA_t - cA_s) (q~_t . k'_s) v_s + exp(cA_t) S_0' q~_t      [gated linear attention]
          - (w_t - gamma_t) (q~_t . k~_t) v_t                                        [diagonal correction]
          + D v_t
    S_T = exp(cA_T) S_0' + sum_s exp(cA_T - cA_s) v_s k'_s^T,    k'_s = w_s k~_s

The bracketed first line is a gated linear attention with one scalar log-decay per (b, t, h)
(:func:`gla_chunked_reference`); it is the only part with a sequential dependency, and the part that the Triton
kernels of ``triton_chunk.py`` compute. Rotation preserves dot products, so ``q~_t . k~_t`` is
``(q_t + q_bias) . (k_t + k_bias)``.

GLA core, chunked (chunk length C, ``gc`` = log-decay cumsum restarted in each chunk, ``gl`` its last value)::

    o_t     = sum_{s<=t in chunk} exp(gc_t - gc_s) (q_t . k_s) v_s + exp(gc_t) h_c q_t
    h_{c+1} = exp(gl) h_c + sum_{s in chunk} exp(gl - gc_s) v_s k_s^T          (h_0 = initial state)

Gradient of the log-decay (used by the backward kernels): with ``dq, dk`` the full gradients,
``d gc_r = q_r . dq_r - k_r . dk_r`` (+ ``<dh_{c+1}, h_{c+1}>`` on the chunk's last step), and the gradient of the
raw log-decay is the reverse cumsum of ``d gc`` within the chunk.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Mamba3State",
    "gated_output",
    "gated_output_bwd",
    "gla_chunked_reference",
    "gla_chunked_reference_bwd",
    "gla_chunked_with_states",
    "gla_recurrent_reference",
    "mamba3_prologue_reference",
    "mamba3_prologue_reference_bwd",
    "mamba3_siso_chunked",
    "mamba3_siso_recurrent",
    "skip_output",
]

TWO_PI = 2.0 * math.pi


class Mamba3State(NamedTuple):
    """Recurrent state of one Mamba-3 SISO layer, carried between calls (decode, stateful eval, TTT)."""

    angle: Tensor  # (B, H, R) fp32, cumulative rotation angle, kept in [0, 2 pi)
    ssm: Tensor  # (B, H, P, N) fp32
    k: Tensor  # (B, H, N) rotated + biased k of the last step
    v: Tensor  # (B, H, P) v of the last step


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp32, or fp64 when any input is fp64 (tests)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the adjacent pairs (2j, 2j+1), j < R = cos.shape[-1], of ``x[..., N]``; the rest is left alone."""
    r = cos.shape[-1]
    if r == 0:
        return x
    pairs = x[..., : 2 * r].unflatten(-1, (r, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    return torch.cat((rotated, x[..., 2 * r :]), dim=-1)


def _segsum(x: Tensor) -> Tensor:
    """``out[..., i, j] = sum_{j < r <= i} x[..., r]`` for j <= i, -inf above the diagonal (stable: no differences)."""
    n = x.shape[-1]
    xr = x[..., None].expand(*x.shape, n)  # xr[..., i, j] = x_i
    strict = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=-1)
    s = xr.masked_fill(~strict, 0.0).cumsum(dim=-2)
    lower = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device))
    return s.masked_fill(~lower, -math.inf)


def _to_chunks(x: Tensor, chunk_size: int) -> Tensor:
    """(B, T, H, *D) -> (B, H, NT, C, *D), zero-padded at the end of T."""
    b, t, h = x.shape[:3]
    nt = -(-t // chunk_size)
    pad = nt * chunk_size - t
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, 0, 0, pad))
    x = x.reshape(b, nt, chunk_size, h, *x.shape[3:])
    return x.permute(0, 3, 1, 2, *range(4, x.dim())) if x.dim() == 5 else x.permute(0, 3, 1, 2)


def _from_chunks(x: Tensor, t: int) -> Tensor:
    """(B, H, NT, C, *D) -> (B, T, H, *D), dropping the padding."""
    if x.dim() == 5:
        b, h, nt, c, d = x.shape
        return x.permute(0, 2, 3, 1, 4).reshape(b, nt * c, h, d)[:, :t]
    b, h, nt, c = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, nt * c, h)[:, :t]


# ---------------------------------------------------------------------------------------------------------------
# GLA core: y_t = sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s + exp(G_t) h0 q_t,  G = cumsum(log_decay)
# ---------------------------------------------------------------------------------------------------------------


def gla_recurrent_reference(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Step-by-step GLA with a scalar log-decay (the core's definition; slow, tests only).

    Args: q, k ``[B, T, H, N]``, v ``[B, T, H, P]``, log_decay ``[B, T, H]``, initial_state ``[B, H, P, N]``.
    Returns: o ``[B, T, H, P]`` in v's dtype, final state ``[B, H, P, N]`` in fp32 (fp64 for fp64 inputs).
    """
    cd = _compute_dtype(q, k, v)
    b, t, h, n = q.shape
    p = v.shape[-1]
    s = initial_state.to(cd) if initial_state is not None else q.new_zeros(b, h, p, n, dtype=cd)
    out = []
    for i in range(t):
        s = torch.exp(log_decay[:, i].to(cd))[..., None, None] * s + v[:, i].to(cd)[..., :, None] * k[:, i].to(cd)[
            ..., None, :
        ]
        out.append(torch.einsum("bhpn,bhn->bhp", s, q[:, i].to(cd)))
    return torch.stack(out, dim=1).to(v.dtype), s


def _gla_chunk_states(gc: Tensor, kc: Tensor, vc: Tensor, initial_state: Tensor | None) -> tuple[Tensor, Tensor]:
    """States at every chunk boundary. Returns (all states ``[B, H, NT+1, P, N]``, weights ``[B, H, NT+1, NT+1]``).

    ``states[:, :, c]`` is the state before chunk c; ``states[:, :, NT]`` is the final state.
    """
    b, h, nt, c = gc.shape
    gl = gc[..., -1]  # (B, H, NT) log-decay over each whole chunk
    # each chunk's own contribution at its end: sum_s exp(gl - gc_s) v_s k_s^T
    kv = (vc * torch.exp(gl[..., None] - gc)[..., None]).transpose(-1, -2) @ kc  # (B, H, NT, P, N)
    h0 = initial_state if initial_state is not None else kv.new_zeros(b, h, *kv.shape[-2:])
    kv_aug = torch.cat((h0[:, :, None].to(kv.dtype), kv), dim=2)  # (B, H, NT+1, P, N)
    # state before chunk i = sum_{j<=i} exp(sum of gl over chunks j..i-1) kv_aug[j]
    weights = torch.exp(_segsum(F.pad(gl, (1, 0))))  # (B, H, NT+1, NT+1)
    states = torch.einsum("bhij,bhjpn->bhipn", weights, kv_aug)
    return states, weights


def gla_chunked_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Chunked gated linear attention with a scalar log-decay per (b, t, h) (SSD / "simple GLA"); differentiable.

    ``o_t = sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s + exp(G_t) h0 q_t`` with ``G = cumsum(log_decay)`` over T, and
    the final state ``h_T = exp(G_T) h0 + sum_s exp(G_T - G_s) v_s k_s^T``. Works for any T (padded inside).

    Args:
        q, k: ``[B, T, H, N]``. v: ``[B, T, H, P]``. log_decay: ``[B, T, H]`` (<= 0).
        initial_state: ``[B, H, P, N]`` or None (zeros). chunk_size: chunk length C.
    Returns:
        o ``[B, T, H, P]`` in v's dtype; final state ``[B, H, P, N]`` in fp32 (fp64 for fp64 inputs).
    """
    o, states = gla_chunked_with_states(q, k, v, log_decay, initial_state, chunk_size)
    return o.to(v.dtype), states[:, :, -1]


def gla_chunked_with_states(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """:func:`gla_chunked_reference` before its casts: o ``[B, T, H, P]`` in fp32 (fp64 for fp64 inputs) and the state
    at every chunk boundary ``[B, H, NT+1, P, N]`` (before each chunk, then the final state; the states before the
    chunks are what the Triton forward keeps for the backward, ``hs``)."""
    cd = _compute_dtype(q, k, v)
    t = q.shape[1]
    qc, kc, vc = (_to_chunks(x.to(cd), chunk_size) for x in (q, k, v))
    gc = _to_chunks(log_decay.to(cd), chunk_size).cumsum(-1)  # (B, H, NT, C), restarted per chunk
    causal = torch.tril(torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device))
    decay = torch.exp((gc[..., :, None] - gc[..., None, :]).masked_fill(~causal, -math.inf))
    attn = (qc @ kc.transpose(-1, -2)) * decay  # (B, H, NT, C, C)
    states, _ = _gla_chunk_states(gc, kc, vc, None if initial_state is None else initial_state.to(cd))
    o = attn @ vc + (qc @ states[:, :, :-1].transpose(-1, -2)) * torch.exp(gc)[..., None]
    return _from_chunks(o, t), states


def gla_chunked_reference_bwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    initial_state: Tensor | None,
    do: Tensor,
    dfinal_state: Tensor | None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Explicit backward of :func:`gla_chunked_reference` (the algorithm of the Triton backward, in PyTorch).

    Returns ``(dq, dk, dv, dlog_decay, dinitial_state)``: dq, dk, dv in the dtypes of q, k, v; dlog_decay and
    dinitial_state ``[B, H, P, N]`` in fp32 (fp64 for fp64 inputs).
    """
    cd = _compute_dtype(q, k, v)
    b, t, h, n = q.shape
    p = v.shape[-1]
    qc, kc, vc, doc = (_to_chunks(x.to(cd), chunk_size) for x in (q, k, v, do))
    gc = _to_chunks(log_decay.to(cd), chunk_size).cumsum(-1)
    gl = gc[..., -1]
    causal = torch.tril(torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device))
    decay = torch.exp((gc[..., :, None] - gc[..., None, :]).masked_fill(~causal, -math.inf))
    attn = (qc @ kc.transpose(-1, -2)) * decay  # A[t, s]
    dattn = (doc @ vc.transpose(-1, -2)) * decay  # dA[t, s] (already masked and decayed)
    states, weights = _gla_chunk_states(gc, kc, vc, None if initial_state is None else initial_state.to(cd))
    # gradient w.r.t. every boundary state: outputs read states[:, :, c] for c < NT, dfinal_state reads the last
    u = (doc * torch.exp(gc)[..., None]).transpose(-1, -2) @ qc  # (B, H, NT, P, N)
    dfin = dfinal_state.to(cd) if dfinal_state is not None else u.new_zeros(b, h, p, n)
    dstates_direct = torch.cat((u, dfin[:, :, None]), dim=2)
    dkv_aug = torch.einsum("bhij,bhipn->bhjpn", weights, dstates_direct)  # transpose of the forward weights
    dh0, dh_end = dkv_aug[:, :, 0], dkv_aug[:, :, 1:]  # dh_end[c]: grad of the state after chunk c
    hs = states[:, :, :-1]
    kdec = torch.exp(gl[..., None] - gc)[..., None]
    dq = dattn @ kc + (doc @ hs) * torch.exp(gc)[..., None]
    dk = dattn.transpose(-1, -2) @ qc + (vc @ dh_end) * kdec
    dv = attn.transpose(-1, -2) @ doc + (kc @ dh_end.transpose(-1, -2)) * kdec
    dgc = (qc * dq).sum(-1) - (kc * dk).sum(-1)
    dg = dgc.flip(-1).cumsum(-1).flip(-1) + (dh_end * states[:, :, 1:]).sum((-1, -2))[..., None]
    return (
        _from_chunks(dq, t).to(q.dtype),
        _from_chunks(dk, t).to(k.dtype),
        _from_chunks(dv, t).to(v.dtype),
        _from_chunks(dg, t).to(cd),
        dh0,
    )


# ---------------------------------------------------------------------------------------------------------------
# Mamba-3 SISO around the GLA core: prologue (bias, rotation, trapezoid weights) and epilogue (diagonal, D, z)
# ---------------------------------------------------------------------------------------------------------------


class Mamba3Prologue(NamedTuple):
    """Inputs of the GLA core plus what the epilogue needs (all in the compute dtype)."""

    q: Tensor  # (B, T, H, N) rotated + biased q
    k: Tensor  # (B, T, H, N) rotated + biased k, scaled by w
    log_decay: Tensor  # (B, T, H) adt
    initial_state: Tensor | None  # (B, H, P, N) S_0 + (1 - lambda_1) Delta_1 v_0 k~_0^T
    diag: Tensor  # (B, T, H) (w_t - gamma_t) (q~_t . k~_t), subtracted as diag * v_t
    theta: Tensor  # (B, T, H, R) cumulative angles (not wrapped)
    k_last: Tensor  # (B, H, N) rotated + biased k of the last step


class _PrologueTerms(NamedTuple):
    """The prologue's per-step terms, shared by the forward and the explicit backward (compute dtype)."""

    theta: Tensor  # (B, T, H, R) cumulative angles
    cos: Tensor
    sin: Tensor
    qb: Tensor  # (B, T, H, N) biased q, k
    kb: Tensor
    q_rot: Tensor  # rotated qb, kb
    k_rot: Tensor
    beta0: Tensor  # (B, T, H) (1 - lambda_t) Delta_t
    beta_next: Tensor  # (1 - lambda_{t+1}) Delta_{t+1}, 0 after the last step
    w: Tensor  # lambda_t Delta_t + beta_next: the weight of k~_t


def _prologue_terms(
    q: Tensor, k: Tensor, dt: Tensor, trap: Tensor, q_bias: Tensor, k_bias: Tensor, angles: Tensor,
    cd: torch.dtype, angle0: Tensor | None = None,
) -> _PrologueTerms:  # fmt: skip
    dt_, trap_ = dt.to(cd), trap.to(cd)
    theta = torch.cumsum(dt_[..., None] * angles.to(cd), dim=1)  # (B, T, H, R)
    if angle0 is not None:
        theta = theta + angle0.to(cd)[:, None]
    cos, sin = torch.cos(theta), torch.sin(theta)
    qb = q.to(cd) + q_bias.to(cd)  # (B, T, H, N); q with G == 1 broadcasts over heads here
    kb = k.to(cd) + k_bias.to(cd)
    beta0 = (1.0 - trap_) * dt_  # beta_t / alpha_t
    beta_next = F.pad(beta0[:, 1:], (0, 0, 0, 1))
    return _PrologueTerms(theta, cos, sin, qb, kb, _rotate(qb, cos, sin), _rotate(kb, cos, sin), beta0, beta_next,
                          trap_ * dt_ + beta_next)  # fmt: skip


def mamba3_siso_prologue(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    adt: Tensor,
    dt: Tensor,
    trap: Tensor,
    q_bias: Tensor,
    k_bias: Tensor,
    angles: Tensor,
    initial_state: Mamba3State | None = None,
) -> Mamba3Prologue:
    """Elementwise work before the scan, in fp32 (fp64 for fp64 inputs); differentiable and compile-friendly."""
    cd = _compute_dtype(q, k, v, adt)
    t = _prologue_terms(q, k, dt, trap, q_bias, k_bias, angles, cd,
                        None if initial_state is None else initial_state.angle)  # fmt: skip
    diag = t.beta_next * (t.qb * t.kb).sum(-1)
    s0 = None
    if initial_state is not None:
        s0 = initial_state.ssm.to(cd) + t.beta0[:, 0, :, None, None] * (
            initial_state.v.to(cd)[..., :, None] * initial_state.k.to(cd)[..., None, :]
        )
    return Mamba3Prologue(t.q_rot, t.k_rot * t.w[..., None], adt.to(cd), s0, diag, t.theta, t.k_rot[:, -1])


def mamba3_prologue_reference(
    q: Tensor, k: Tensor, dt: Tensor, trap: Tensor, q_bias: Tensor, k_bias: Tensor, angles: Tensor,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The prologue without initial state, as the fused Triton kernels compute it: ``(q~, k~ w)`` cast to
    ``out_dtype`` and diag in fp32 (fp64 for fp64 inputs)."""
    pro = mamba3_siso_prologue(q, k, q, dt, dt, trap, q_bias, k_bias, angles)  # (v, adt) = (q, dt) only set the dtype
    return pro.q.to(out_dtype), pro.k.to(out_dtype), pro.diag


def _pair_cross(g: Tensor, y: Tensor, r: int) -> Tensor:
    """``g1 y0 - g0 y1`` for the first r pairs: the theta-derivative of ``g . rot(x, theta)`` with ``y = rot(x)``."""
    g2, y2 = g[..., : 2 * r].unflatten(-1, (r, 2)), y[..., : 2 * r].unflatten(-1, (r, 2))
    return g2[..., 1] * y2[..., 0] - g2[..., 0] * y2[..., 1]


def mamba3_prologue_reference_bwd(
    q: Tensor, k: Tensor, dt: Tensor, trap: Tensor, q_bias: Tensor, k_bias: Tensor, angles: Tensor,
    dq_rot: Tensor, dk_w: Tensor, ddiag: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Explicit backward of :func:`mamba3_prologue_reference` (the algorithm of the Triton backward, in PyTorch).

    Returns ``(dq, dk, ddt, dtrap, dq_bias, dk_bias, dangles)`` shaped like the inputs, in fp32 (fp64 for fp64 inputs).
    """
    cd = _compute_dtype(q, k, dt)
    dt_, trap_ = dt.to(cd), trap.to(cd)
    t = _prologue_terms(q, k, dt, trap, q_bias, k_bias, angles, cd)
    cos, sin, qb, kb, q_rot, k_rot, bn, w = t.cos, t.sin, t.qb, t.kb, t.q_rot, t.k_rot, t.beta_next, t.w
    gq, gk = dq_rot.to(cd), dk_w.to(cd)
    gd = ddiag.to(cd) if ddiag is not None else torch.zeros_like(dt_)
    gkr = gk * w[..., None]  # gradient of the rotated k
    dw = (gk * k_rot).sum(-1)
    dqb = _rotate(gq, cos, -sin) + (gd * bn)[..., None] * kb  # rotation by -theta is the transpose
    dkb = _rotate(gkr, cos, -sin) + (gd * bn)[..., None] * qb
    r = angles.shape[-1]
    rc = (_pair_cross(gq, q_rot, r) + _pair_cross(gkr, k_rot, r)).flip(1).cumsum(1).flip(1)  # sum_{s>=t} dtheta_s
    dbn_prev = F.pad((dw + gd * (qb * kb).sum(-1))[:, :-1], (0, 0, 1, 0))  # gradient of bn_{t-1}
    ddt = dw * trap_ + dbn_prev * (1.0 - trap_) + (rc * angles.to(cd)).sum(-1)
    dtrap = (dw - dbn_prev) * dt_
    if q.shape[2] == 1:  # q, k shared by the heads
        dq, dk = dqb.sum(2, keepdim=True), dkb.sum(2, keepdim=True)
    else:
        dq, dk = dqb, dkb
    return dq, dk, ddt, dtrap, dqb.sum((0, 1)), dkb.sum((0, 1)), dt_[..., None] * rc


def skip_output(o: Tensor, v: Tensor, v_skip: Tensor | None) -> Tensor:
    """``u = o + v_skip v`` in o's dtype (``o`` without ``v_skip``): the ungated output."""
    return o if v_skip is None else o + v_skip.to(o.dtype)[..., None] * v.to(o.dtype)


def gated_output(o: Tensor, v: Tensor, v_skip: Tensor | None, gate: Tensor | None) -> Tensor:
    """``y = (o + v_skip v) * gate sigmoid(gate)`` (either term optional), computed in o's dtype, returned in v's.

    The output stage that the Triton GLA kernels fuse: ``v_skip`` ``[B, T, H]`` is one coefficient of v per step
    and head (Mamba-3: ``D - diag``), ``gate`` ``[B, T, H, P]`` the SiLU gate z.
    """
    y = skip_output(o, v, v_skip)
    if gate is not None:
        zz = gate.to(o.dtype)
        y = y * zz * torch.sigmoid(zz)
    return y.to(v.dtype)


def gated_output_bwd(
    dy: Tensor, u: Tensor | None, v: Tensor, v_skip: Tensor | None, gate: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Explicit backward of :func:`gated_output` (what the Triton backward computes in its chunk pass).

    ``u`` (:func:`skip_output`, the ungated output) is only read when there is a gate. Returns
    ``(do, dv, dv_skip, dgate)`` in dy's dtype; dv is the skip term's part of v's gradient (None without ``v_skip``).
    """
    du = dy
    dgate = None
    if gate is not None:
        zz = gate.to(dy.dtype)
        sig = torch.sigmoid(zz)
        dgate = du * u.to(dy.dtype) * sig * (1 + zz * (1 - sig))
        du = du * zz * sig
    if v_skip is None:
        return du, None, None, dgate
    return du, du * v_skip.to(dy.dtype)[..., None], (du * v.to(dy.dtype)).sum(-1), dgate


def mamba3_siso_epilogue(o: Tensor, v: Tensor, diag: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """``y = (o - diag v + D v) * silu(z)``, computed in diag's dtype (fp32/fp64), returned in v's dtype."""
    return gated_output(o.to(diag.dtype), v, mamba3_v_skip(diag, D), z)


def mamba3_v_skip(diag: Tensor, D: Tensor | None) -> Tensor:
    """The coefficient of v in Mamba-3's output, ``D - diag`` ``[B, T, H]`` (diagonal correction and D skip)."""
    return -diag if D is None else D.to(diag.dtype) - diag


def mamba3_final_state(pro: Mamba3Prologue, ssm: Tensor, v: Tensor) -> Mamba3State:
    """Final (theta_T mod 2 pi, S_T, k~_T, v_T); fp32 (fp64 for fp64 inputs)."""
    theta = pro.theta[:, -1]
    return Mamba3State(theta - TWO_PI * torch.floor(theta / TWO_PI), ssm, pro.k_last, v[:, -1].to(ssm.dtype))


def mamba3_siso_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    adt: Tensor,
    dt: Tensor,
    trap: Tensor,
    q_bias: Tensor,
    k_bias: Tensor,
    angles: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    initial_state: Mamba3State | None = None,
) -> tuple[Tensor, Mamba3State]:
    """The recurrence of the module docstring, one step at a time (the definition; slow, for tests).

    Shapes as :func:`golf.kernels.ssm_scan.mamba3_siso`. Returns ``(y [B, T, H, P] in v's dtype, final state)``.
    """
    cd = _compute_dtype(q, k, v, adt)
    b, t, h, p = v.shape
    n = q.shape[-1]
    r = angles.shape[-1]
    if initial_state is not None:
        theta = initial_state.angle.to(cd)
        s = initial_state.ssm.to(cd)
        k_prev, v_prev = initial_state.k.to(cd), initial_state.v.to(cd)
    else:
        theta = q.new_zeros(b, h, r, dtype=cd)
        s = q.new_zeros(b, h, p, n, dtype=cd)
        k_prev, v_prev = q.new_zeros(b, h, n, dtype=cd), q.new_zeros(b, h, p, dtype=cd)
    ys = []
    for i in range(t):
        dt_i, lam = dt[:, i].to(cd), trap[:, i].to(cd)
        theta = theta + dt_i[..., None] * angles[:, i].to(cd)
        cos, sin = torch.cos(theta), torch.sin(theta)
        q_i = _rotate(q[:, i].to(cd) + q_bias.to(cd), cos, sin)  # (B, H, N)
        k_i = _rotate(k[:, i].to(cd) + k_bias.to(cd), cos, sin)
        v_i = v[:, i].to(cd)
        alpha = torch.exp(adt[:, i].to(cd))
        beta = (1.0 - lam) * dt_i * alpha
        gamma = lam * dt_i
        s = (
            alpha[..., None, None] * s
            + beta[..., None, None] * (v_prev[..., :, None] * k_prev[..., None, :])
            + gamma[..., None, None] * (v_i[..., :, None] * k_i[..., None, :])
        )
        y = torch.einsum("bhpn,bhn->bhp", s, q_i)
        if D is not None:
            y = y + D.to(cd)[:, None] * v_i
        if z is not None:
            z_i = z[:, i].to(cd)
            y = y * z_i * torch.sigmoid(z_i)
        ys.append(y)
        k_prev, v_prev = k_i, v_i
    final = Mamba3State(theta - TWO_PI * torch.floor(theta / TWO_PI), s, k_prev, v_prev)
    return torch.stack(ys, dim=1).to(v.dtype), final


def mamba3_siso_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    adt: Tensor,
    dt: Tensor,
    trap: Tensor,
    q_bias: Tensor,
    k_bias: Tensor,
    angles: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    initial_state: Mamba3State | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Mamba3State]:
    """Mamba-3 SISO through the chunked GLA form (module docstring); pure PyTorch, differentiable, compilable.

    Shapes as :func:`golf.kernels.ssm_scan.mamba3_siso`. Returns ``(y [B, T, H, P] in v's dtype, final state)``.
    """
    pro = mamba3_siso_prologue(q, k, v, adt, dt, trap, q_bias, k_bias, angles, initial_state)
    o, ssm = gla_chunked_reference(pro.q, pro.k, v.to(pro.q.dtype), pro.log_decay, pro.initial_state, chunk_size)
    return mamba3_siso_epilogue(o, v, pro.diag, D, z), mamba3_final_state(pro, ssm, v)
