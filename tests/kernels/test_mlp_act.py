"""The MLP with its activation fused into the matmuls: the reference against autograd, the Triton kernels (interpreter on
CPU, compiled on a GPU) against the reference, and the custom ops under opcheck and torch.compile."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from golf.kernels.mlp_act import mlp_act, triton_mlp
from golf.kernels.mlp_act.op import _mlp_act_bwd, _mlp_act_fwd
from golf.kernels.mlp_act.reference import mlp_act_reference, mlp_act_reference_bwd

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_CUDA = torch.cuda.is_available()
needs_triton = pytest.mark.skipif(not (INTERPRET or HAS_CUDA), reason="needs CUDA or TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="needs a CUDA GPU and TRITON_INTERPRET=0")
SLOPES = pytest.mark.parametrize("slope", [0.0, 0.5], ids=["relu2", "leaky_relu2"])


def plain_mlp(x, w1, w2, slope):
    """The model's unfused MLP (golf.modules.layers.MLP) on given weights."""
    return F.linear(F.leaky_relu(F.linear(x, w1), slope).square(), w2)


def operands(m, d, f, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=gen)
    w1 = torch.randn(f, d, generator=gen) / d**0.5
    w2 = torch.randn(d, f, generator=gen) / f**0.5
    dy = torch.randn(m, d, generator=gen)
    return (t.to(device, dtype) for t in (x, w1, w2, dy))


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture
def exact_fp32():
    prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # tf32 off for fp32 comparisons
    yield
    torch.set_float32_matmul_precision(prec)


@SLOPES
def test_op_on_cpu_matches_autograd_of_the_unfused_mlp(slope):
    x, w1, w2, dy = operands(3 * 7, 12, 20, torch.float64)
    x = x.view(3, 7, 12)
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
    plain_mlp(*leaves, slope).backward(dy.view(3, 7, 12))
    fused = [t.clone().requires_grad_() for t in (x, w1, w2)]
    y = mlp_act(*fused, slope)
    y.backward(dy.view(3, 7, 12))
    torch.testing.assert_close(y, plain_mlp(x, w1, w2, slope))
    for ref, out in zip(leaves, fused):
        torch.testing.assert_close(out.grad, ref.grad)


def test_mlp_act_refuses_mismatched_operands_in_one_line():
    x, w1, w2, _ = operands(4, 8, 16)
    with pytest.raises(ValueError, match=r"need x \[..., D\], w1 \[F, D\], w2 \[D, F\]"):
        mlp_act(x, w1, w2.t())
    with pytest.raises(ValueError, match="must share a dtype"):
        mlp_act(x, w1.double(), w2)


@needs_triton
@SLOPES
@pytest.mark.parametrize("tiles", [None, {"bm": 16, "bn": 32, "bk": 16, "group_m": 2}], ids=["shipped", "small-tiles"])
def test_triton_kernels_match_the_reference(monkeypatch, exact_fp32, slope, tiles):
    """Partial tiles in M, N and K (70 x 40 -> 72), and with small tiles several programs in grouped order."""
    if tiles is not None:
        cfg = dict(triton_mlp.LAUNCH_CONFIG["fwd"], **tiles, num_warps=1, num_stages=1)
        monkeypatch.setattr(triton_mlp, "LAUNCH_CONFIG", {"fwd": cfg, "bwd": cfg})
    device = "cpu" if INTERPRET else "cuda"
    x, w1, w2, dy = operands(70, 40, 72, device=device)
    _, h_ref, a_ref = mlp_act_reference(x, w1, w2, slope)
    h, a = triton_mlp.fc_act_fwd_triton(x, w1, slope)
    assert rel_err(h, h_ref) < 1e-6 and rel_err(a, a_ref) < 1e-6
    dh = triton_mlp.dgrad_act_bwd_triton(dy, w2, h_ref, slope)
    dx_ref, _, _ = mlp_act_reference_bwd(x, w1, w2, h_ref, a_ref, dy, slope)
    assert rel_err(dh @ w1, dx_ref) < 1e-6


@needs_triton
def test_triton_kernels_refuse_operands_they_cannot_read():
    x, w1, w2, dy = operands(8, 16, 32, device="cpu" if INTERPRET else "cuda")
    with pytest.raises(ValueError, match="last dimension must be contiguous"):
        triton_mlp.fc_act_fwd_triton(x.t().contiguous().t(), w1, 0.0)
    with pytest.raises(ValueError, match="disagree on D"):
        triton_mlp.fc_act_fwd_triton(x, w1[:, :8].contiguous(), 0.0)
    with pytest.raises(ValueError, match="disagree"):
        triton_mlp.dgrad_act_bwd_triton(dy, w2, torch.empty(8, 31, device=x.device), 0.0)


def test_custom_ops_opcheck():
    x, w1, w2, dy = operands(6, 8, 12)
    _, h, a = mlp_act_reference(x, w1, w2, 0.5)
    torch.library.opcheck(_mlp_act_fwd, (x.requires_grad_(), w1.requires_grad_(), w2.requires_grad_(), 0.5))
    torch.library.opcheck(_mlp_act_bwd, (x.detach(), w1.detach(), w2.detach(), h, a, dy, 0.5))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(backend):
    x, w1, w2, dy = operands(2 * 9, 16, 24)
    x = x.view(2, 9, 16)

    def step(x, w1, w2):
        return (mlp_act(torch.tanh(x), w1, w2, 0.5) * 2).sum(-1)

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    results = []
    for fn in (step, compiled):
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
        out = fn(*leaves)
        out.backward(dy[:, 0].reshape(2, 9))
        results.append((out, *(t.grad for t in leaves)))
    for ref, got in zip(*results):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
@SLOPES
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_op_on_gpu_matches_the_unfused_mlp_at_the_training_shape(slope, dtype):
    x, w1, w2, dy = operands(8192, 512, 1536, dtype=dtype, device="cuda")
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
    fused = [t.clone().requires_grad_() for t in (x, w1, w2)]
    y_ref = plain_mlp(*leaves, slope)
    y_ref.backward(dy)
    y = mlp_act(*fused, slope)
    y.backward(dy)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-4  # fp32: IEEE in both paths at the default matmul precision
    assert rel_err(y, y_ref) < tol
    for ref, out in zip(leaves, fused):
        assert rel_err(out.grad, ref.grad) < tol
