"""Tests of the fused Mamba-3 prologue (``golf::mamba3_prologue_fwd/bwd``, ``triton_prologue.py``): Triton kernels
(interpreter on CPU) and the custom ops vs the PyTorch reference prologue, and ``mamba3_siso``'s fused training path
vs the recurrent definition. Style and helpers as ``test_ssm_scan.py`` (relative-RMS ``assert_close``)."""

from __future__ import annotations

import re

import pytest
import torch
from test_ssm_scan import GPU_CASES, HAS_CUDA, assert_close, gpu, make_inputs, needs_cuda, needs_triton

from golf.kernels.ssm_scan import mamba3_siso
from golf.kernels.ssm_scan import op as ssm_op
from golf.kernels.ssm_scan.reference import mamba3_prologue_reference, mamba3_siso_chunked, mamba3_siso_recurrent

INPUT_NAMES = ("q", "k", "dt", "trap", "q_bias", "k_bias", "angles")


def prologue_inputs(batch, seqlen, nheads, ngroups, d_state, n_angles, dtype=torch.float32, device="cpu", seed=0):
    """The seven prologue inputs of :func:`make_inputs` (angles shared by heads as an ``expand``, like the module)."""
    inputs, _ = make_inputs(batch=batch, seqlen=seqlen, nheads=nheads, ngroups=ngroups, d_state=d_state,
                            n_angles=n_angles, dtype=dtype, device=device, seed=seed)  # fmt: skip
    inputs["angles"] = inputs["angles"][:, :, :1].expand(-1, -1, nheads, -1)
    return tuple(inputs[name] for name in INPUT_NAMES)


def reference_with_grads(inputs, out_dtype, cotangents):
    """fp64 reference prologue on the given inputs: (outputs, the 7 input gradients for ``cotangents``)."""
    leaves = [x.detach().double().requires_grad_() for x in inputs]
    outs = mamba3_prologue_reference(*leaves, torch.float64)
    grads = torch.autograd.grad(outs, leaves, [c.double() for c in cotangents], allow_unused=True)
    return outs, [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, leaves)]


def random_cotangents(inputs, out_dtype, seed=1):
    b, t, h = inputs[2].shape
    gen = torch.Generator().manual_seed(seed)
    dev = inputs[0].device
    g_q, g_k = (torch.randn(b, t, h, inputs[0].shape[-1], generator=gen).to(dev, out_dtype) for _ in range(2))
    return g_q, g_k, torch.randn(b, t, h, generator=gen).to(dev)


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels (interpreter on CPU) <-> reference, fp32
# ---------------------------------------------------------------------------------------------------------------

KERNEL_CASES = [
    pytest.param(2, 40, 3, 1, 16, 3, id="B2-T40-G1-N16-R3"),
    pytest.param(2, 130, 3, 3, 16, 8, id="B2-T130-GH-N16-R8"),
    pytest.param(1, 70, 3, 1, 16, 0, id="B1-T70-G1-N16-R0"),
    pytest.param(2, 97, 3, 3, 8, 1, id="B2-T97-GH-N8-R1"),
    pytest.param(2, 70, 4, 1, 16, 5, id="B2-T70-H4-G1-N16-R5"),  # 4 heads: the fix kernel takes them in one program
]


@needs_triton
@pytest.mark.parametrize("bwd_prefetch", [0, 1], ids=["", "prefetch"])
@pytest.mark.parametrize("batch,seqlen,nheads,ngroups,d_state,n_angles", KERNEL_CASES)
def test_triton_prologue_matches_reference(batch, seqlen, nheads, ngroups, d_state, n_angles, bwd_prefetch,
                                           monkeypatch):  # fmt: skip
    """Forward, and backward with the forward's theta carries (and, without ddiag, with them recomputed); the angle
    block sums over 2 blocks per program and the block scans in steps of 2 blocks, so that both cross program and
    step boundaries at these short lengths; the fix kernel with two heads per program where H allows; the backward
    with and without the next head's rows prefetched."""
    from golf.kernels.ssm_scan import triton_prologue
    from golf.kernels.ssm_scan.triton_prologue import mamba3_prologue_bwd_triton, mamba3_prologue_fwd_triton

    monkeypatch.setitem(triton_prologue.LAUNCH_CONFIG, "bwd_prefetch", bwd_prefetch)
    monkeypatch.setattr(triton_prologue, "SCAN_BLOCKS", 2)
    monkeypatch.setitem(triton_prologue.LAUNCH_CONFIG, "cb", 2)
    monkeypatch.setitem(triton_prologue.LAUNCH_CONFIG, "fix_heads", 2)  # H 4: two programs of two heads
    device = "cuda" if HAS_CUDA else "cpu"
    inputs = prologue_inputs(batch, seqlen, nheads, ngroups, d_state, n_angles, device=device)
    cot = random_cotangents(inputs, torch.float32)
    outs_ref, grads_ref = reference_with_grads(inputs, torch.float32, cot)
    outs = mamba3_prologue_fwd_triton(*inputs, torch.float32)
    assert outs[3].shape == triton_prologue.theta_carry_shape(batch, seqlen, nheads, n_angles)
    grads = mamba3_prologue_bwd_triton(*inputs, *cot, outs[3])
    # the op returns these as they are: a custom op's outputs may not share storage (torch checks it on CUDA)
    assert len({x.untyped_storage().data_ptr() for x in (*outs, *grads) if x.numel()}) == sum(
        1 for x in (*outs, *grads) if x.numel()
    ), "outputs share storage"
    for name, ref, out in zip(("q_rot", "k_w", "diag"), outs_ref, outs):
        assert_close(name, ref, out, 1e-5)
    for name, ref, out in zip(INPUT_NAMES, grads_ref, grads):
        assert_close(f"d{name}", ref, out, 1e-5)
    grads_no_ddiag = mamba3_prologue_bwd_triton(*inputs, cot[0], cot[1], None)
    _, grads_ref = reference_with_grads(inputs, torch.float32, (cot[0], cot[1], torch.zeros_like(cot[2])))
    for name, ref, out in zip(INPUT_NAMES, grads_ref, grads_no_ddiag):
        assert_close(f"d{name} (ddiag None)", ref, out, 1e-5)


@needs_triton
def test_triton_prologue_backward_refuses_a_carry_of_another_shape():
    """The backward reads theta at every T-block start from the forward; a carry of another launch's shape (another
    BT, or N/2 wide) is refused in one line before any launch, naming the shape wanted."""
    from golf.kernels.ssm_scan import triton_prologue
    from golf.kernels.ssm_scan.triton_prologue import mamba3_prologue_bwd_triton

    device = "cuda" if HAS_CUDA else "cpu"
    inputs = prologue_inputs(1, 40, 2, 1, 16, 3, device=device)
    wanted = triton_prologue.theta_carry_shape(1, 40, 2, 3)
    carry = torch.zeros(*wanted[:3], 8, device=device)  # N/2 wide instead of RP = 4
    with pytest.raises(ValueError, match=re.escape(f"carry must be the forward's theta carries {wanted} fp32")):
        mamba3_prologue_bwd_triton(*inputs, *random_cotangents(inputs, torch.float32), carry)


# ---------------------------------------------------------------------------------------------------------------
# custom ops (CPU: PyTorch fallback) and mamba3_siso's fused path
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("ngroups", [1, 3], ids=["G1", "GH"])
def test_prologue_opcheck(ngroups, out_dtype):
    inputs = [x.clone().requires_grad_() for x in prologue_inputs(1, 12, 3, ngroups, 8, 2)]
    torch.library.opcheck(ssm_op._mamba3_prologue_fwd, (*inputs, out_dtype))
    cot = random_cotangents(inputs, out_dtype)
    detached = [x.detach() for x in inputs]
    carry = ssm_op._mamba3_prologue_fwd(*detached, out_dtype)[3]
    torch.library.opcheck(ssm_op._mamba3_prologue_bwd, (*detached, *cot, carry))
    torch.library.opcheck(ssm_op._mamba3_prologue_bwd, (*detached, cot[0], cot[1], None, carry))


def check_op_against_reference(inputs, out_dtype, ratio: float) -> None:
    """The op's outputs and its autograd gradients of every input vs the fp64 reference prologue under autograd."""
    cot = random_cotangents(inputs, out_dtype)
    outs_ref, grads_ref = reference_with_grads(inputs, out_dtype, cot)
    leaves = [x.clone().requires_grad_() for x in inputs]
    outs = ssm_op.mamba3_prologue(*leaves, out_dtype)
    grads = torch.autograd.grad(outs, leaves, cot)
    for name, ref, out in zip(("q_rot", "k_w", "diag"), outs_ref, outs):
        assert_close(name, ref, out, ratio)
    for name, ref, out in zip(INPUT_NAMES, grads_ref, grads):
        assert_close(f"d{name}", ref, out, ratio)


@pytest.mark.parametrize("ngroups", [1, 3], ids=["G1", "GH"])
def test_prologue_op_matches_reference(ngroups):
    """The op's forward and autograd == the reference prologue under autograd (fp32 on CPU)."""
    check_op_against_reference(prologue_inputs(2, 30, 3, ngroups, 8, 3), torch.float32, 1e-6)


def _siso_with_grads(fn, inputs: dict):
    """``y = fn(**inputs)`` and the gradients of ``sum(y * w)`` w.r.t. every floating input."""
    leaves = {key: (x.detach().clone().requires_grad_() if x is not None else None) for key, x in inputs.items()}
    y = fn(**leaves)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(y)
    names = [key for key, x in leaves.items() if x is not None]
    return y, dict(zip(names, torch.autograd.grad((y * w).sum(), [leaves[key] for key in names])))


# fp64: the GLA core still gets its log-decay in fp32 (adt.float()), hence 1e-7 rather than fp64-exact
@pytest.mark.parametrize("dtype,ratio", [(torch.float64, 1e-7), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("ngroups", [1, 3], ids=["G1", "GH"])
def test_siso_fused_path_matches_recurrent(ngroups, dtype, ratio, monkeypatch):
    """backend="triton" without state takes the fused prologue op and matches the recurrent definition (y, grads)."""
    calls = []
    fwd_op = ssm_op._mamba3_prologue_fwd
    monkeypatch.setattr(ssm_op, "_mamba3_prologue_fwd", lambda *a: calls.append(1) or fwd_op(*a))
    inputs, _ = make_inputs(seqlen=45, ngroups=ngroups, n_angles=3, dtype=dtype, seed=6)
    y_ref, g_ref = _siso_with_grads(lambda **kw: mamba3_siso_recurrent(**{k: v.double() if v is not None else None
                                                                          for k, v in kw.items()})[0], inputs)  # fmt: skip
    y, grads = _siso_with_grads(lambda **kw: mamba3_siso(**kw, chunk_size=16, backend="triton"), inputs)
    assert calls, "the fused prologue op was not called"
    assert_close("y", y_ref, y, ratio)
    for key in g_ref:
        assert_close(f"d{key}", g_ref[key], grads[key], ratio)


# ---------------------------------------------------------------------------------------------------------------
# GPU: realistic shape (B 2, T 4096, H 16, N 64, R 16, G 1) vs fp64 references
# ---------------------------------------------------------------------------------------------------------------

# The kernels compute in fp32 from the given inputs and cotangents; in bf16 only q~, k~w, dq and dk are rounded to
# bf16 (relative error ~2e-3), so 1e-2 everywhere. fp32: 1e-4 (theta and its reverse cumsum are sums over 4096
# steps; the blocked sums are no less accurate than torch.cumsum's).
PROLOGUE_GPU_CASES = [
    pytest.param(torch.bfloat16, 1e-2, id="bf16"),
    pytest.param(torch.float32, 1e-4, id="fp32"),
]


@gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("fast_trig", [0, 1], ids=["libdevice-trig", "fast-trig"])
@pytest.mark.parametrize("dtype,ratio", PROLOGUE_GPU_CASES)
def test_prologue_op_gpu_realistic(dtype, ratio, fast_trig, monkeypatch):
    from golf.kernels.ssm_scan import triton_prologue

    monkeypatch.setitem(triton_prologue.LAUNCH_CONFIG, "fast_trig", fast_trig)
    inputs = prologue_inputs(2, 4096, 16, 1, 64, 16, dtype=dtype, device="cuda", seed=4)
    check_op_against_reference(inputs, dtype, ratio)


@gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("seqlen,dtype,ratio,overrides", GPU_CASES)
def test_siso_fused_path_gpu_realistic(seqlen, dtype, ratio, overrides):
    """The whole op without state (fused prologue + GLA kernels) vs the fp64 chunked reference (GPU_CASES limits)."""
    inputs, _ = make_inputs(batch=2, seqlen=seqlen, nheads=16, d_state=64, headdim=64, n_angles=16, dtype=dtype,
                            device="cuda", seed=4)  # fmt: skip
    inputs64 = {key: (x.double() if x is not None else None) for key, x in inputs.items()}
    y_ref, g_ref = _siso_with_grads(lambda **kw: mamba3_siso_chunked(**kw, chunk_size=64)[0], inputs64)
    prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        y, grads = _siso_with_grads(lambda **kw: mamba3_siso(**kw, backend="triton"), inputs)
    finally:
        torch.set_float32_matmul_precision(prec)
    assert_close("y", y_ref, y, ratio)
    for key in g_ref:
        assert_close(f"d{key}", g_ref[key], grads[key], overrides.get(f"d{key}", ratio))
