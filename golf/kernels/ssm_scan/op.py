"""The GLA core and the Mamba-3 prologue as ``torch.library`` custom ops, and the public Mamba-3 SISO entry point
:func:`mamba3_siso`.

* ``golf::gla_gated_fwd`` / ``golf::gla_gated_bwd``: the chunked GLA core with its output stage (diagonal
  correction and D skip as one coefficient of v, SiLU gate) fused in (``triton_chunk.py``).
* ``golf::mamba3_prologue_fwd`` / ``golf::mamba3_prologue_bwd``: bias, angle cumsum, rotation, trapezoid weights and
  the diagonal term, fused (``triton_prologue.py``); used on the training path (no initial state, no final state).

The ops run the Triton kernels on CUDA tensors and fall back to the PyTorch references on any other device, so the
ops, their fake (meta) functions and ``torch.compile(fullgraph=True)`` can be exercised on CPU. Each op is opaque to
Dynamo/Inductor: no graph break, one graph; the prologue of the stateful calls and the skip coefficient ``D - diag``
are plain PyTorch that Inductor fuses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from golf.kernels.ssm_scan.reference import (
    Mamba3State,
    _compute_dtype,
    gated_output,
    gated_output_bwd,
    gla_chunked_reference_bwd,
    gla_chunked_with_states,
    mamba3_final_state,
    mamba3_prologue_reference,
    mamba3_prologue_reference_bwd,
    mamba3_siso_chunked,
    mamba3_siso_prologue,
    mamba3_siso_recurrent,
    mamba3_v_skip,
    skip_output,
)

__all__ = ["gla_chunk", "mamba3_prologue", "mamba3_siso"]

BACKENDS = ("auto", "triton", "reference", "recurrent")


# ---------------------------------------------------------------------------------------------------------------
# custom ops: forward, backward, fake functions, autograd
# ---------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("golf::gla_gated_fwd", mutates_args=())
def _gla_gated_fwd(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, initial_state: Tensor | None, v_skip: Tensor | None,
    gate: Tensor | None, chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(y, final state, u, hs): u = o + v_skip v, the ungated output the gate's gradient needs (empty without a
    gate); hs the state before every chunk (input dtype), kept for the backward: 2 bytes x H P N / chunk per token
    (2 KB at H 16, P = N = chunk = 64), one pass of the sequential state kernel less per backward."""
    if q.is_cuda:
        from golf.kernels.ssm_scan.triton_chunk import gla_chunk_fwd_triton

        with torch.cuda.device(q.device):
            return gla_chunk_fwd_triton(q, k, v, log_decay, initial_state, chunk_size, v_skip, gate)
    with torch.no_grad():
        o, states = gla_chunked_with_states(q, k, v, log_decay, initial_state, chunk_size)
        u = skip_output(o, v, v_skip)
        y = gated_output(u, v, None, gate)
        u = u.to(v.dtype) if gate is not None else v.new_empty(0)
    ht, hs = states[:, :, -1].float(), states[:, :, :-1].to(k.dtype)
    return y.contiguous(), ht.contiguous(), u.contiguous(), hs.contiguous()


@_gla_gated_fwd.register_fake
def _(q, k, v, log_decay, initial_state, v_skip, gate, chunk_size):
    b, t, h, n = q.shape
    u = v.new_empty(v.shape if gate is not None else 0)
    hs = k.new_empty((b, h, -(-t // chunk_size), v.shape[-1], n))
    return v.new_empty(v.shape), q.new_empty((b, h, v.shape[-1], n), dtype=torch.float32), u, hs


@torch.library.custom_op("golf::gla_gated_bwd", mutates_args=())
def _gla_gated_bwd(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, initial_state: Tensor | None, v_skip: Tensor | None,
    gate: Tensor | None, u: Tensor, hs: Tensor, dy: Tensor, dfinal_state: Tensor | None, chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients of every input; those of absent inputs (initial state, v_skip, gate) are returned empty. u and hs
    are the forward's third and fourth outputs (the CPU fallback recomputes what it needs)."""
    if q.is_cuda:
        from golf.kernels.ssm_scan.triton_chunk import gla_chunk_bwd_triton

        with torch.cuda.device(q.device):
            grads = gla_chunk_bwd_triton(q, k, v, log_decay, initial_state, dy, dfinal_state, chunk_size, v_skip, gate,
                                         u, hs)  # fmt: skip
    else:
        grads = _gla_gated_bwd_reference(q, k, v, log_decay, initial_state, v_skip, gate, u, dy, dfinal_state,
                                         chunk_size)  # fmt: skip
    dq, dk, dv, dg, dh0, dskip, dgate = grads
    return (dq.contiguous(), dk.contiguous(), dv.contiguous(), dg.float().contiguous(), dh0.float().contiguous(),
            _or_empty(dskip, q, torch.float32), _or_empty(dgate, q, v.dtype))  # fmt: skip


@torch.no_grad()
def _gla_gated_bwd_reference(q, k, v, log_decay, initial_state, v_skip, gate, u, dy, dfinal_state, chunk_size):
    """The backward on the PyTorch references (CPU): the output stage's, then the GLA core's."""
    cd = _compute_dtype(q, k, v)
    do, dv_skip_term, dskip, dgate = gated_output_bwd(dy.to(cd), u, v, v_skip, gate)
    dq, dk, dv, dg, dh0 = gla_chunked_reference_bwd(q, k, v, log_decay, initial_state, do, dfinal_state, chunk_size)
    if dv_skip_term is not None:
        dv = (dv.to(cd) + dv_skip_term).to(v.dtype)
    return dq, dk, dv, dg, dh0, dskip, None if dgate is None else dgate.to(gate.dtype)


def _or_empty(grad: Tensor | None, like: Tensor, dtype: torch.dtype) -> Tensor:
    """A custom op returns tensors only: the gradient of an absent input is an empty tensor."""
    return grad.contiguous() if grad is not None else like.new_empty(0, dtype=dtype)


@_gla_gated_bwd.register_fake
def _(q, k, v, log_decay, initial_state, v_skip, gate, u, hs, dy, dfinal_state, chunk_size):
    b, t, h, n = q.shape
    p = v.shape[-1]
    return (
        torch.empty_like(q),
        torch.empty_like(k),
        torch.empty_like(v),
        log_decay.new_empty(log_decay.shape, dtype=torch.float32),
        q.new_empty((b, h, p, n), dtype=torch.float32),
        q.new_empty(v_skip.shape if v_skip is not None else 0, dtype=torch.float32),
        q.new_empty(gate.shape if gate is not None else 0, dtype=v.dtype),
    )


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, log_decay, initial_state, v_skip, gate, chunk_size = inputs
    u, hs = output[2], output[3]
    ctx.mark_non_differentiable(u, hs)
    ctx.save_for_backward(q, k, v, log_decay, initial_state, v_skip, gate, u, hs)
    ctx.chunk_size = chunk_size
    ctx.log_decay_dtype = log_decay.dtype


def _backward(ctx, dy: Tensor, dfinal_state: Tensor | None, _du: Tensor | None, _dhs: Tensor | None):
    q, k, v, log_decay, initial_state, v_skip, gate, u, hs = ctx.saved_tensors
    dq, dk, dv, dg, dh0, dskip, dgate = _gla_gated_bwd(
        q, k, v, log_decay, initial_state, v_skip, gate, u, hs, dy, dfinal_state, ctx.chunk_size
    )
    return (
        dq, dk, dv, dg.to(ctx.log_decay_dtype),
        dh0 if initial_state is not None else None,
        dskip.to(v_skip.dtype) if v_skip is not None else None,
        dgate.to(gate.dtype) if gate is not None else None,
        None,
    )  # fmt: skip


_gla_gated_fwd.register_autograd(_backward, setup_context=_setup_context)


def gla_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
    v_skip: Tensor | None = None,
    gate: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked gated linear attention with a scalar log-decay and a fused output stage (the ``golf::gla_gated_fwd``
    op, differentiable).

    ``o_t = sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s + exp(G_t) h0 q_t``, ``G = cumsum(log_decay)`` over T, and
    ``y_t = (o_t + v_skip_t v_t) * silu(gate_t)`` (``y = o`` without v_skip and gate).

    Args:
        q, k: ``[B, T, H, N]``; v: ``[B, T, H, P]`` (q, k, v in one dtype: bf16/fp16/fp32 on CUDA).
        log_decay: ``[B, T, H]`` fp32, <= 0. initial_state: ``[B, H, P, N]`` fp32 or None.
        chunk_size: 16/32/64/128 on CUDA (any on CPU).
        v_skip: ``[B, T, H]`` fp32 or None. gate: ``[B, T, H, P]`` or None (any row stride, like v).
    Returns:
        y ``[B, T, H, P]`` in v's dtype, final state ``[B, H, P, N]`` fp32.
    """
    y, final_state, _, _ = _gla_gated_fwd(q, k, v, log_decay, initial_state, v_skip, gate, chunk_size)
    return y, final_state


def _prologue_on_triton(*tensors: Tensor) -> bool:
    """The Triton prologue kernels compute in fp32: CUDA tensors, no fp64 (fp64 takes the reference)."""
    return tensors[0].is_cuda and all(t.dtype != torch.float64 for t in tensors)


@torch.library.custom_op("golf::mamba3_prologue_fwd", mutates_args=())
def _mamba3_prologue_fwd(
    q: Tensor, k: Tensor, dt: Tensor, trap: Tensor, q_bias: Tensor, k_bias: Tensor, angles: Tensor,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(q~, k~ w, diag, carry): carry is theta at the start of every T-block of the Triton kernels, kept for the
    backward (empty on the reference path, which recomputes theta)."""
    if _prologue_on_triton(q, k, dt, trap, q_bias, k_bias, angles):
        from golf.kernels.ssm_scan.triton_prologue import mamba3_prologue_fwd_triton

        with torch.cuda.device(q.device):
            return mamba3_prologue_fwd_triton(q, k, dt, trap, q_bias, k_bias, angles, out_dtype)
    with torch.no_grad():
        q_rot, k_w, diag = mamba3_prologue_reference(q, k, dt, trap, q_bias, k_bias, angles, out_dtype)
    return q_rot.contiguous(), k_w.contiguous(), diag.contiguous(), dt.new_empty(0, dtype=torch.float32)


def _theta_carry_fake(q, k, dt, trap, q_bias, k_bias, angles) -> Tensor:
    if not _prologue_on_triton(q, k, dt, trap, q_bias, k_bias, angles):
        return dt.new_empty(0, dtype=torch.float32)
    from golf.kernels.ssm_scan.triton_prologue import theta_carry_shape

    b, t, h = dt.shape
    return dt.new_empty(theta_carry_shape(b, t, h, angles.shape[-1]), dtype=torch.float32)


@_mamba3_prologue_fwd.register_fake
def _(q, k, dt, trap, q_bias, k_bias, angles, out_dtype):
    b, t, h = dt.shape
    q_rot = q.new_empty((b, t, h, q.shape[-1]), dtype=out_dtype)
    diag = dt.new_empty((b, t, h), dtype=_compute_dtype(q, k, dt))
    return q_rot, torch.empty_like(q_rot), diag, _theta_carry_fake(q, k, dt, trap, q_bias, k_bias, angles)


@torch.library.custom_op("golf::mamba3_prologue_bwd", mutates_args=())
def _mamba3_prologue_bwd(
    q: Tensor, k: Tensor, dt: Tensor, trap: Tensor, q_bias: Tensor, k_bias: Tensor, angles: Tensor,
    dq_rot: Tensor, dk_w: Tensor, ddiag: Tensor | None, carry: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients of the seven inputs; ``carry`` is the forward's fourth output (the Triton path reads it, the
    reference ignores it)."""
    inputs = (q, k, dt, trap, q_bias, k_bias, angles)
    if _prologue_on_triton(*inputs, dq_rot, dk_w):
        from golf.kernels.ssm_scan.triton_prologue import mamba3_prologue_bwd_triton

        with torch.cuda.device(q.device):
            grads = mamba3_prologue_bwd_triton(*inputs, dq_rot, dk_w, ddiag, carry)
    else:
        grads = mamba3_prologue_reference_bwd(*inputs, dq_rot, dk_w, ddiag)
    return tuple(g.to(x.dtype).contiguous() for g, x in zip(grads, inputs))


@_mamba3_prologue_bwd.register_fake
def _(q, k, dt, trap, q_bias, k_bias, angles, dq_rot, dk_w, ddiag, carry):
    return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, dt, trap, q_bias, k_bias, angles))


def _prologue_setup_context(ctx, inputs, output) -> None:
    ctx.mark_non_differentiable(output[3])
    ctx.save_for_backward(*inputs[:7], output[3])


def _prologue_backward(ctx, dq_rot: Tensor | None, dk_w: Tensor | None, ddiag: Tensor | None, _dcarry: Tensor | None):
    q, k, dt, trap, q_bias, k_bias, angles, carry = ctx.saved_tensors
    shape = (*dt.shape, q.shape[-1])
    dq_rot = dq_rot if dq_rot is not None else q.new_zeros(shape)
    dk_w = dk_w if dk_w is not None else torch.zeros_like(dq_rot)
    grads = _mamba3_prologue_bwd(q, k, dt, trap, q_bias, k_bias, angles, dq_rot, dk_w.to(dq_rot.dtype), ddiag, carry)
    return (*grads, None)


_mamba3_prologue_fwd.register_autograd(_prologue_backward, setup_context=_prologue_setup_context)


def mamba3_prologue(
    q: Tensor, k: Tensor, dt: Tensor, trap: Tensor, q_bias: Tensor, k_bias: Tensor, angles: Tensor,
    out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Fused Mamba-3 prologue without initial state (the ``golf::mamba3_prologue_fwd`` op, differentiable).

    Args: q, k ``[B, T, G, N]`` (G = 1 or H), dt, trap ``[B, T, H]`` fp32, q_bias, k_bias ``[H, N]``,
    angles ``[B, T, H, R]`` (any strides), out_dtype: the GLA kernels' operand dtype.
    Returns: q~ and k~ w ``[B, T, H, N]`` in ``out_dtype`` (the GLA core's q, k), diag ``[B, T, H]`` fp32 (fp64 for
    fp64 inputs); equal to ``Mamba3Prologue.q, .k, .diag`` of the reference.
    """
    q_rot, k_w, diag, _ = _mamba3_prologue_fwd(q, k, dt, trap, q_bias, k_bias, angles, out_dtype)
    return q_rot, k_w, diag


# ---------------------------------------------------------------------------------------------------------------
# public op
# ---------------------------------------------------------------------------------------------------------------


def _validate(q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, initial_state, backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"mamba3_siso: backend must be one of {BACKENDS}, got {backend!r}")
    if v.dim() != 4 or q.dim() != 4 or k.shape != q.shape:
        raise ValueError(
            f"mamba3_siso: q, k must be (B, T, G, N) and v (B, T, H, P); got {q.shape}, {k.shape}, {v.shape}"
        )
    b, t, h, p = v.shape
    g, n = q.shape[2], q.shape[3]
    if q.shape[:2] != (b, t) or g not in (1, h):
        raise ValueError(f"mamba3_siso: q/k must be (B={b}, T={t}, G in (1, {h}), N); got {tuple(q.shape)}")
    if t < 1:
        raise ValueError("mamba3_siso: needs at least one step")
    for name, x in (("adt", adt), ("dt", dt), ("trap", trap)):
        if x.shape != (b, t, h):
            raise ValueError(f"mamba3_siso: {name} must be (B, T, H) = {(b, t, h)}, got {tuple(x.shape)}")
    r = angles.shape[-1]
    if angles.shape[:3] != (b, t, h) or 2 * r > n:
        raise ValueError(
            f"mamba3_siso: angles must be (B, T, H, R) with R <= N/2 = {n // 2}, got {tuple(angles.shape)}"
        )
    if q_bias.shape != (h, n) or k_bias.shape != (h, n):
        raise ValueError(f"mamba3_siso: q_bias/k_bias must be (H, N) = {(h, n)}")
    if D is not None and D.shape != (h,):
        raise ValueError(f"mamba3_siso: D must be (H,) = ({h},), got {tuple(D.shape)}")
    if z is not None and z.shape != v.shape:
        raise ValueError(f"mamba3_siso: z must have v's shape {tuple(v.shape)}, got {tuple(z.shape)}")
    if initial_state is not None:
        want = {"angle": (b, h, r), "ssm": (b, h, p, n), "k": (b, h, n), "v": (b, h, p)}
        for name, shape in want.items():
            got = tuple(getattr(initial_state, name).shape)
            if got != shape:
                raise ValueError(f"mamba3_siso: initial_state.{name} must be {shape}, got {got}")


def mamba3_siso(
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
    return_final_state: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Mamba3State]:
    r"""Mamba-3 SISO scan (trapezoidal discretisation, data-dependent rotation, D skip, SiLU gate).

    Per head: ``S_t = alpha_t S_{t-1} + beta_t v_{t-1} k~_{t-1}^T + gamma_t v_t k~_t^T``,
    ``y_t = (S_t q~_t + D v_t) * z_t sigmoid(z_t)``, with ``alpha_t = exp(adt_t)``,
    ``beta_t = (1 - trap_t) dt_t alpha_t``, ``gamma_t = trap_t dt_t`` and q~, k~ the biased q, k rotated in adjacent
    pairs by ``theta_t = theta_{t-1} + dt_t angles_t`` (full definition: ``reference.py``). Decays, cumsums and states
    are fp32; q, k, v, z may be bf16 (CUDA) or fp32.

    Args:
        q, k: ``[B, T, G, N]``, G == 1 (shared by all heads) or G == H; already normalised (no bias).
        v: ``[B, T, H, P]``. z: ``[B, T, H, P]`` or None (no gate).
        adt: ``[B, T, H]`` fp32, ``Delta * A <= 0``. dt: ``[B, T, H]`` fp32, ``Delta > 0``.
        trap: ``[B, T, H]`` fp32, ``lambda`` in (0, 1). angles: ``[B, T, H, R]``, R <= N / 2, rotation rates.
        q_bias, k_bias: ``[H, N]``. D: ``[H]`` or None.
        initial_state: a :class:`Mamba3State` from an earlier call, or None (zeros).
        chunk_size: chunk length of the chunked algorithms (16/32/64/128 for Triton).
        return_final_state: also return the :class:`Mamba3State` after the last step.
        backend: ``"triton"``: the ``golf::gla_gated_*`` custom ops, with the fused ``golf::mamba3_prologue_*``
            ops when there is no initial state and no final state is asked for (training; the stateful calls keep the
            PyTorch prologue, which also gives the final angle and k~_T). Triton kernels on CUDA; on other devices
            the ops fall back to the PyTorch references, so this path compiles and runs on CPU too. ``"reference"``: the
            chunked pure-PyTorch form (differentiable, Inductor-compilable); ``"recurrent"``: the step-by-step
            definition (slow); ``"auto"``: ``"triton"`` on CUDA tensors, ``"reference"`` otherwise.
    Returns:
        y ``[B, T, H, P]`` in v's dtype, or ``(y, final_state)`` with ``return_final_state``.

    Example::

        >>> import torch
        >>> B, T, H, N, P, R = 1, 10, 2, 16, 16, 4
        >>> q, k = torch.randn(B, T, 1, N), torch.randn(B, T, 1, N)
        >>> v, z = torch.randn(B, T, H, P), torch.randn(B, T, H, P)
        >>> dt = torch.rand(B, T, H) * 0.1
        >>> y, state = mamba3_siso(q, k, v, -dt, dt, torch.rand(B, T, H), torch.ones(H, N), torch.ones(H, N),
        ...                        torch.randn(B, T, H, R), D=torch.ones(H), z=z, return_final_state=True)
        >>> y.shape, state.ssm.shape
        (torch.Size([1, 10, 2, 16]), torch.Size([1, 2, 16, 16]))
    """
    _validate(q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, initial_state, backend)
    if backend == "auto":
        backend = "triton" if v.is_cuda else "reference"
    if backend == "recurrent":
        y, state = mamba3_siso_recurrent(q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, initial_state)
    elif backend == "reference":
        y, state = mamba3_siso_chunked(q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, initial_state, chunk_size)
    else:
        # the kernels take q, k, v in one dtype (v's): bf16 operands for bf16 models, fp32 stays fp32
        cd = _compute_dtype(q, k, v, adt)
        kd = v.dtype if v.dtype in (torch.bfloat16, torch.float16) else cd
        # the output stage (diagonal correction, D skip, z gate) runs inside the GLA kernels: y = (o + skip v) silu(z)
        if initial_state is None and not return_final_state:  # training: fused prologue op
            q_rot, k_w, diag = mamba3_prologue(q, k, dt, trap, q_bias, k_bias, angles, kd)
            y, _ = gla_chunk(q_rot, k_w, v.to(kd), adt.float(), None, chunk_size, mamba3_v_skip(diag.to(cd), D), z)
            return y.to(v.dtype)
        # stateful calls (initial state in, or final state out): the PyTorch prologue, which also yields theta, k~_T
        pro = mamba3_siso_prologue(q, k, v, adt, dt, trap, q_bias, k_bias, angles, initial_state)
        y, ssm = gla_chunk(pro.q.to(kd), pro.k.to(kd), v.to(kd), pro.log_decay.float(),
                           None if pro.initial_state is None else pro.initial_state.float(), chunk_size,
                           mamba3_v_skip(pro.diag, D), z)  # fmt: skip
        y = y.to(v.dtype)
        state = mamba3_final_state(pro, ssm.to(pro.q.dtype), v) if return_final_state else None
    return (y, state) if return_final_state else y
