"""Tests of golf.kernels.ssm_scan: recurrent definition <-> chunked reference <-> Triton kernels <-> custom op/compile.

Errors are measured as a relative RMS, ``||out - ref|| / ||ref||`` (plus NaN checks), through one ``assert_close``.
Triton tests run under ``TRITON_INTERPRET=1`` on CPU (set by the Makefile) at small shapes; ``gpu`` tests need CUDA.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch

from golf.kernels.ssm_scan import Mamba3State, mamba3_siso
from golf.kernels.ssm_scan.reference import (
    gated_output,
    gated_output_bwd,
    gla_chunked_reference,
    gla_chunked_reference_bwd,
    gla_chunked_with_states,
    gla_recurrent_reference,
    mamba3_siso_chunked,
    mamba3_siso_recurrent,
    skip_output,
)

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_RUNS_HERE = HAS_TRITON and (HAS_CUDA or INTERPRET)

needs_triton = pytest.mark.skipif(
    not TRITON_RUNS_HERE, reason="needs triton and either CUDA or TRITON_INTERPRET=1 (set before import)"
)
gpu = pytest.mark.gpu
# tests/conftest.py defaults TRITON_INTERPRET to 1; on a GPU the interpreter is slow, and its bf16 tl.dot is wrong
# (Triton 3.6), so the GPU tests want real compilation: TRITON_INTERPRET=0 python -m pytest -m gpu tests/kernels
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA or INTERPRET, reason="needs a CUDA GPU and TRITON_INTERPRET=0 (real Triton compilation)"
)


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, ratio: float) -> None:
    """Relative RMS error ``||out - ref|| / ||ref||`` must stay below ``ratio``; no NaN/inf anywhere."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    ref64, out64 = ref.detach().double(), out.detach().double()
    assert torch.isfinite(ref64).all(), f"{name}: reference has NaN/inf"
    assert torch.isfinite(out64).all(), f"{name}: output has NaN/inf"
    diff = (out64 - ref64).norm().item()
    base = ref64.norm().item()
    err = diff / base if base > 0 else diff
    max_abs = (out64 - ref64).abs().max().item() if ref64.numel() else 0.0
    print(f"{name:>16}: rel-rms {err:.3e} (limit {ratio:.1e}), max abs {max_abs:.3e}")
    assert err <= ratio, f"{name}: relative RMS error {err:.3e} > {ratio:.1e} (max abs {max_abs:.3e})"


def make_inputs(
    *,
    batch: int = 2,
    seqlen: int = 50,
    nheads: int = 3,
    ngroups: int = 1,
    d_state: int = 8,
    headdim: int = 8,
    n_angles: int = 2,
    with_D: bool = True,
    with_z: bool = True,
    with_state: bool = False,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[dict, Mamba3State | None]:
    """Random Mamba-3 inputs shaped like the module's (normalised q/k, softplus-like dt, A < 0, sigmoid trap)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    def uni(*shape, lo=0.0, hi=1.0):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo).to(device=device)

    b, t, h, g, n, p, r = batch, seqlen, nheads, ngroups, d_state, headdim, n_angles
    fdt = torch.float64 if dtype == torch.float64 else torch.float32
    dt = uni(b, t, h, lo=0.01, hi=0.3).to(fdt)
    a = -uni(h, lo=0.5, hi=2.0).to(fdt)
    inputs = dict(
        q=rnd(b, t, g, n, scale=n**-0.5),
        k=rnd(b, t, g, n, scale=n**-0.5),
        v=rnd(b, t, h, p),
        adt=dt * a,
        dt=dt,
        trap=uni(b, t, h, lo=0.05, hi=0.95).to(fdt),
        q_bias=(1.0 + rnd(h, n, scale=0.1)).to(fdt),
        k_bias=(1.0 + rnd(h, n, scale=0.1)).to(fdt),
        angles=rnd(b, t, h, r, scale=math.pi).to(fdt),
        D=(1.0 + rnd(h, scale=0.1)).to(fdt) if with_D else None,
        z=rnd(b, t, h, p) if with_z else None,
    )
    state = None
    if with_state:
        state = Mamba3State(
            angle=uni(b, h, r, hi=2 * math.pi).to(fdt),
            ssm=rnd(b, h, p, n, scale=0.5).to(fdt),
            k=rnd(b, h, n).to(fdt),
            v=rnd(b, h, p).to(fdt),
        )
    return inputs, state


def _grad_leaves(inputs: dict, state: Mamba3State | None) -> tuple[dict, Mamba3State | None]:
    leaves = {key: (x.detach().clone().requires_grad_(x.is_floating_point()) if x is not None else None)
              for key, x in inputs.items()}  # fmt: skip
    if state is not None:
        state = Mamba3State(*(x.detach().clone().requires_grad_() for x in state))
    return leaves, state


def run_with_grads(fn, inputs: dict, state: Mamba3State | None, **kwargs):
    """Run ``fn(**inputs, initial_state=state, **kwargs) -> (y, final)`` and differentiate a loss touching every
    output (y and all four final-state tensors). Returns ``(y, final, {name: grad})``."""
    leaves, leaf_state = _grad_leaves(inputs, state)
    y, final = fn(**leaves, initial_state=leaf_state, **kwargs)
    gen = torch.Generator().manual_seed(1)
    w_y = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y)
    loss = (y * w_y).sum() + sum(((f.double() ** 2).sum() * 0.5) for f in final[1:]) + final.angle.double().sum()
    names = [key for key, x in leaves.items() if x is not None]
    tensors = [leaves[key] for key in names]
    if leaf_state is not None:
        names += [f"state.{f}" for f in Mamba3State._fields]
        tensors += list(leaf_state)
    grads = torch.autograd.grad(loss, tensors)
    return y, final, dict(zip(names, grads))


def compare_all(ref, out, ratio: float, tag: str = "", overrides: dict[str, float] | None = None) -> None:
    """Compare y, the final state and every gradient (``overrides`` maps a gradient name such as "dangles" to its own
    ratio)."""
    overrides = overrides or {}
    y_ref, f_ref, g_ref = ref
    y_out, f_out, g_out = out
    assert_close(f"{tag}y", y_ref, y_out, ratio)
    for field in Mamba3State._fields:
        ref_f, out_f = getattr(f_ref, field), getattr(f_out, field)
        if field == "angle":  # compare on the circle
            out_f = ref_f + torch.remainder(out_f - ref_f + math.pi, 2 * math.pi) - math.pi
        assert_close(f"{tag}final.{field}", ref_f, out_f, ratio)
    assert g_ref.keys() == g_out.keys()
    for key in g_ref:
        assert_close(f"{tag}d{key}", g_ref[key], g_out[key], overrides.get(f"d{key}", ratio))


# ---------------------------------------------------------------------------------------------------------------
# recurrent definition <-> chunked reference (fp64)
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _recurrent_result(seqlen: int, ngroups: int, with_state: bool, with_dz: bool):
    inputs, state = make_inputs(seqlen=seqlen, ngroups=ngroups, with_state=with_state, with_D=with_dz, with_z=with_dz)
    return run_with_grads(mamba3_siso_recurrent, inputs, state)


CHUNK_CASES = [
    pytest.param(chunk, ngroups, with_state, with_dz, id=f"C{chunk}-G{ngroups}-{'state' if with_state else 'nostate'}"
                 f"-{'Dz' if with_dz else 'noDz'}")  # fmt: skip
    for chunk in (8, 16, 32, 64)
    for ngroups in (1, 3)
    for with_state in (False, True)
    for with_dz in (False, True)
]


@pytest.mark.parametrize("chunk,ngroups,with_state,with_dz", CHUNK_CASES)
def test_chunked_matches_recurrent(chunk, ngroups, with_state, with_dz):
    seqlen = 50  # not a multiple of any chunk size; a single padded chunk for C=64
    ref = _recurrent_result(seqlen, ngroups, with_state, with_dz)
    inputs, state = make_inputs(seqlen=seqlen, ngroups=ngroups, with_state=with_state, with_D=with_dz, with_z=with_dz)
    out = run_with_grads(mamba3_siso_chunked, inputs, state, chunk_size=chunk)
    compare_all(ref, out, 1e-10)


@pytest.mark.parametrize("fn", [mamba3_siso_recurrent, mamba3_siso_chunked], ids=["recurrent", "chunked"])
def test_state_carry(fn):
    inputs, state = make_inputs(seqlen=45, with_state=True, seed=3)
    kwargs = {"chunk_size": 16} if fn is mamba3_siso_chunked else {}
    y_full, f_full = fn(**inputs, initial_state=state, **kwargs)
    split = 23
    first = {key: (x[:, :split] if x is not None and x.dim() >= 3 else x) for key, x in inputs.items()}
    second = {key: (x[:, split:] if x is not None and x.dim() >= 3 else x) for key, x in inputs.items()}
    y1, f1 = fn(**first, initial_state=state, **kwargs)
    y2, f2 = fn(**second, initial_state=f1, **kwargs)
    assert_close("y", y_full, torch.cat((y1, y2), dim=1), 1e-12)
    for field in Mamba3State._fields:
        assert_close(f"final.{field}", getattr(f_full, field), getattr(f2, field), 1e-12)


def test_gla_core_and_explicit_backward():
    """gla_chunked_reference == step-by-step GLA, and its explicit backward == autograd."""
    gen = torch.Generator().manual_seed(5)
    b, t, h, n, p = 2, 45, 2, 8, 4
    q, k = torch.randn(b, t, h, n, generator=gen, dtype=torch.float64), torch.randn(b, t, h, n, generator=gen).double()
    v = torch.randn(b, t, h, p, generator=gen, dtype=torch.float64)
    g = -torch.rand(b, t, h, generator=gen, dtype=torch.float64)
    h0 = torch.randn(b, h, p, n, generator=gen, dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in (q, k, v, g, h0)]
    o_ref, s_ref = gla_recurrent_reference(*leaves)
    do, dht = torch.randn_like(o_ref), torch.randn_like(s_ref)
    grads_ref = torch.autograd.grad((o_ref * do).sum() + (s_ref * dht).sum(), leaves)
    for chunk in (8, 16, 64):
        o, s = gla_chunked_reference(q, k, v, g, h0, chunk)
        assert_close(f"C{chunk} o", o_ref, o, 1e-12)
        assert_close(f"C{chunk} state", s_ref, s, 1e-12)
        grads = gla_chunked_reference_bwd(q, k, v, g, h0, do, dht, chunk)
        for name, ref, out in zip(("dq", "dk", "dv", "dg", "dh0"), grads_ref, grads):
            assert_close(f"C{chunk} {name}", ref, out, 1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels (interpreter on CPU) <-> chunked reference, fp32
# ---------------------------------------------------------------------------------------------------------------

TRITON_CASES = [
    pytest.param(1, 40, 2, 16, 16, 16, False, False, False, id="B1-T40-N16-P16-C16-noh0"),
    pytest.param(2, 130, 2, 32, 16, 32, True, True, False, id="B2-T130-N32-P16-C32-h0"),
    pytest.param(1, 70, 2, 16, 32, 64, True, False, False, id="B1-T70-N16-P32-C64-h0-nodht"),
    pytest.param(2, 70, 2, 16, 16, 32, False, False, True, id="B2-T70-N16-P16-C32-output-stage"),
    pytest.param(1, 40, 2, 16, 32, 16, True, True, True, id="B1-T40-N16-P32-C16-h0-output-stage"),
]


@needs_triton
@pytest.mark.parametrize("batch,seqlen,nheads,d_state,headdim,chunk,with_h0,with_dht,output_stage", TRITON_CASES)
def test_triton_gla_matches_reference(batch, seqlen, nheads, d_state, headdim, chunk, with_h0, with_dht, output_stage):
    _check_triton_gla(batch, seqlen, nheads, d_state, headdim, chunk, with_h0, with_dht, output_stage=output_stage)


@needs_triton
@pytest.mark.parametrize("with_skip,with_gate", [(True, False), (False, True)], ids=["skip-only", "gate-only"])
def test_triton_gla_output_stage_terms_alone(with_skip, with_gate):
    _check_triton_gla(2, 40, 2, 16, 16, 16, True, False, output_stage=(with_skip, with_gate))


@needs_triton
def test_triton_gla_state_kernels_split_over_p(monkeypatch):
    """The sequential state kernels with P split over programs (bv < P; the shipped bv covers P at these sizes)."""
    from golf.kernels.ssm_scan import triton_chunk

    for name in ("fwd_states", "bwd_states"):
        monkeypatch.setitem(triton_chunk.LAUNCH_CONFIG, name, dict(triton_chunk.LAUNCH_CONFIG[name], bv=8))
    _check_triton_gla(1, 40, 2, 16, 32, 16, True, True, output_stage=True)


@needs_triton
@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_triton_gla_parallel_kernels_loop_over_chunks(monkeypatch, chunks):
    """The chunk-parallel kernels at 1 chunk per program (no loop) and looping over 2 or 3, NT not a multiple of them
    (T 130, chunk 16: 9 chunks), the last program's loop cut short."""
    from golf.kernels.ssm_scan import triton_chunk

    for name in ("fwd_output", "bwd_dqkvg"):
        monkeypatch.setitem(triton_chunk.LAUNCH_CONFIG, name, dict(triton_chunk.LAUNCH_CONFIG[name], chunks=chunks))
    _check_triton_gla(2, 130, 2, 16, 16, 16, True, True, output_stage=True)


@needs_triton
def test_triton_gla_reads_v_and_z_as_column_slices_without_a_copy():
    """The mixer's v and z are column slices of in_proj's output (row stride > H * P): the kernels read them in
    place."""
    from golf.kernels.ssm_scan.triton_chunk import _rows_of_heads

    v, z = _check_triton_gla(2, 130, 2, 32, 16, 32, True, True, output_stage=True, row_padding=24)
    assert v.stride(1) == z.stride(1) == 2 * (2 * 16) + 24 and _rows_of_heads(v) is v and _rows_of_heads(z) is z


@needs_triton
def test_triton_gla_refuses_mismatched_output_stage_operands():
    """The output stage's operands are checked before any launch: one line naming the operand and the shape wanted."""
    from golf.kernels.ssm_scan.triton_chunk import gla_chunk_bwd_triton, gla_chunk_fwd_triton

    device = "cuda" if HAS_CUDA else "cpu"
    q, k, v = (torch.randn(1, 16, 2, 16, device=device) for _ in range(3))
    g = -torch.rand(1, 16, 2, device=device)
    with pytest.raises(ValueError, match=r"gate must have v's shape \(1, 16, 2, 16\)"):
        gla_chunk_fwd_triton(q, k, v, g, None, 16, None, torch.randn(1, 16, 2, 8, device=device))
    with pytest.raises(ValueError, match=r"v_skip must be \(B, T, H\) = \(1, 16, 2\)"):
        gla_chunk_fwd_triton(q, k, v, g, None, 16, torch.randn(1, 16, device=device))
    with pytest.raises(ValueError, match="the backward with a gate needs u"):
        gla_chunk_bwd_triton(q, k, v, g, None, torch.randn_like(v), None, 16, None, torch.randn_like(v))
    with pytest.raises(ValueError, match=r"hs must be the forward's chunk states \(1, 2, 1, 16, 16\)"):
        gla_chunk_bwd_triton(q, k, v, g, None, torch.randn_like(v), None, 16, hs=torch.randn(1, 2, 2, 16, 16))


def _check_triton_gla(
    batch, seqlen, nheads, d_state, headdim, chunk, with_h0, with_dht, output_stage=False, row_padding=0
):
    """Triton forward/backward vs the chunked reference (autograd through the reference and its output stage).

    ``output_stage``: False, True (skip and gate) or a pair (with_skip, with_gate)."""
    from golf.kernels.ssm_scan.triton_chunk import gla_chunk_bwd_triton, gla_chunk_fwd_triton

    with_skip, with_gate = output_stage if isinstance(output_stage, tuple) else (output_stage, output_stage)
    device = "cuda" if HAS_CUDA else "cpu"
    gen = torch.Generator().manual_seed(7)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    q, k = rnd(batch, seqlen, nheads, d_state) / d_state**0.5, rnd(batch, seqlen, nheads, d_state) / d_state**0.5
    rows = rnd(batch, seqlen, row_padding + 2 * nheads * headdim)  # v, z: column slices of wider rows
    v = rows[..., row_padding : row_padding + nheads * headdim].view(batch, seqlen, nheads, headdim)
    z = rows[..., row_padding + nheads * headdim :].view(batch, seqlen, nheads, headdim) if with_gate else None
    skip = rnd(batch, seqlen, nheads) if with_skip else None
    g = -torch.rand(batch, seqlen, nheads, generator=gen).to(device) * 0.3
    h0 = rnd(batch, nheads, headdim, d_state) if with_h0 else None
    dy = rnd(batch, seqlen, nheads, headdim)
    dht = rnd(batch, nheads, headdim, d_state) if with_dht else None
    prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # tf32 off for the fp32 comparison
    try:
        y, ht, u, hs = gla_chunk_fwd_triton(q, k, v, g, h0, chunk, skip, z)
        grads = gla_chunk_bwd_triton(q, k, v, g, h0, dy, dht, chunk, skip, z, u, hs)
        assert_close("backward with recomputed states", grads[0], gla_chunk_bwd_triton(
            q, k, v, g, h0, dy, dht, chunk, skip, z, u)[0], 1e-6)  # fmt: skip
    finally:
        torch.set_float32_matmul_precision(prec)
    # the reference with a zero initial state when there is none: the kernels return its gradient either way
    h0_ref = h0 if with_h0 else q.new_zeros(batch, nheads, headdim, d_state)
    inputs = {"q": q, "k": k, "v": v, "g": g, "h0": h0_ref, "skip": skip, "z": z}
    leaves = {name: x.detach().clone().requires_grad_() for name, x in inputs.items() if x is not None}
    lv = {name: leaves.get(name) for name in inputs}
    o_ref, ht_ref = gla_chunked_reference(lv["q"], lv["k"], lv["v"], lv["g"], lv["h0"], chunk)
    y_ref = gated_output(o_ref, lv["v"], lv["skip"], lv["z"])
    loss = (y_ref * dy).sum() + ((ht_ref * dht).sum() if with_dht else 0.0)
    grads_ref = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    assert_close("y", y_ref, y, 1e-5)
    assert_close("final", ht_ref, ht, 1e-5)
    if with_gate:
        assert_close("u", skip_output(o_ref, lv["v"], lv["skip"]), u, 1e-5)
    assert_close("hs", gla_chunked_with_states(q, k, v, g, h0, chunk)[1][:, :, :-1], hs, 1e-5)
    for name, out in zip(inputs, grads):
        assert (out is None) == (inputs[name] is None), f"d{name}"
        if out is not None:
            assert_close(f"d{name}", grads_ref[name], out, 1e-5)
    return v, z


# ---------------------------------------------------------------------------------------------------------------
# custom op and torch.compile (CPU: the op falls back to the chunked reference)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_skip,with_gate", [(True, True), (True, False), (False, True), (False, False)])
def test_gated_output_explicit_backward(with_skip, with_gate):
    """gated_output_bwd (the output stage's backward, as the kernels compute it) == autograd through gated_output."""
    gen = torch.Generator().manual_seed(9)
    o, v, z, dy = (torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64) for _ in range(4))
    skip = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in (o, v, skip, z)]
    y = gated_output(leaves[0], leaves[1], leaves[2] if with_skip else None, leaves[3] if with_gate else None)
    do_ref, dv_ref, dskip_ref, dz_ref = torch.autograd.grad(y, leaves, dy, allow_unused=True)
    u = skip_output(o, v, skip if with_skip else None)
    do, dv, dskip, dz = gated_output_bwd(dy, u, v, skip if with_skip else None, z if with_gate else None)
    assert_close("do", do_ref, do, 1e-12)
    for name, ref, out in (("dv", dv_ref, dv), ("dskip", dskip_ref, dskip), ("dz", dz_ref, dz)):
        assert (ref is None) == (out is None), name
        if out is not None:
            assert_close(name, ref, out, 1e-12)


def test_compile_caches_are_tagged_with_the_kernel_sources(tmp_path):
    """A warm Inductor cache must not serve a graph compiled against older op definitions: every cache key carries a
    hash of the kernel packages' sources, and a user's own tag is left alone."""
    import shutil

    import golf.kernels

    kernels = Path(golf.kernels.__file__).parent
    assert torch.compiler.config.cache_key_tag == golf.kernels.kernel_source_tag()
    copy = tmp_path / "kernels"
    shutil.copytree(kernels, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert golf.kernels.kernel_source_tag(copy) == golf.kernels.kernel_source_tag()
    for changed in ("ssm_scan/op.py", "mlp_act/op.py"):  # every kernel package's ops are in the key
        edited = copy / changed
        original = edited.read_text()
        edited.write_text(original + "\n# changed\n")
        assert golf.kernels.kernel_source_tag(copy) != golf.kernels.kernel_source_tag()
        edited.write_text(original)
    with torch.compiler.config.patch(cache_key_tag="users-own"):
        golf.kernels.tag_compile_caches()
        assert torch.compiler.config.cache_key_tag == "users-own"


def test_custom_op_opcheck():
    from golf.kernels.ssm_scan.op import _gla_gated_bwd, _gla_gated_fwd

    gen = torch.Generator().manual_seed(11)
    b, t, h, n, p = 1, 20, 2, 8, 8
    q, k, v, z = (torch.randn(b, t, h, d, generator=gen) for d in (n, n, p, p))
    g = -torch.rand(b, t, h, generator=gen)
    skip = torch.randn(b, t, h, generator=gen)
    h0 = torch.randn(b, h, p, n, generator=gen)
    q, k, v, g, h0, skip, z = (x.requires_grad_() for x in (q, k, v, g, h0, skip, z))
    torch.library.opcheck(_gla_gated_fwd, (q, k, v, g, h0, skip, z, 8))
    torch.library.opcheck(_gla_gated_fwd, (q, k, v, g, None, None, None, 8))
    torch.library.opcheck(_gla_gated_fwd, (q, k, v, g, None, skip, None, 8))
    do, dht = torch.randn(b, t, h, p, generator=gen), torch.randn(b, h, p, n, generator=gen)
    plain = (q.detach(), k.detach(), v.detach(), g.detach())
    hs = torch.randn(b, h, 3, p, n, generator=gen)
    torch.library.opcheck(_gla_gated_bwd, (*plain, None, None, None, v.new_empty(0), hs, do, dht, 8))
    u = torch.randn(b, t, h, p, generator=gen)
    torch.library.opcheck(_gla_gated_bwd, (*plain, None, skip.detach(), z.detach(), u, hs, do, None, 8))


@pytest.mark.parametrize("ngroups", [1, 3], ids=["G1", "GH"])
def test_op_backend_matches_reference(ngroups):
    """backend="triton" (the custom ops; reference fallback on CPU) == backend="reference", outputs/grads/states."""
    inputs, state = make_inputs(seqlen=40, ngroups=ngroups, with_state=True, dtype=torch.float32, seed=2)

    def call(backend):
        def fn(initial_state, **kw):
            return mamba3_siso(**kw, initial_state=initial_state, chunk_size=16, return_final_state=True,
                               backend=backend)  # fmt: skip

        return run_with_grads(fn, inputs, state)

    compare_all(call("reference"), call("triton"), 1e-5)


class _TinyMixer(torch.nn.Module):
    """Tiny Mamba-3-like mixer around mamba3_siso, for the compile tests."""

    def __init__(self, d_model=32, nheads=2, d_state=16, headdim=16, n_angles=4, backend="triton"):
        super().__init__()
        self.h, self.n, self.p, self.r, self.backend = nheads, d_state, headdim, n_angles, backend
        self.d_inner = nheads * headdim
        self.in_proj = torch.nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + 3 * nheads + n_angles, bias=False)
        self.q_bias = torch.nn.Parameter(torch.ones(nheads, d_state))
        self.k_bias = torch.nn.Parameter(torch.ones(nheads, d_state))
        self.D = torch.nn.Parameter(torch.ones(nheads))
        self.out_proj = torch.nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        z, xs, q, k, dd_dt, dd_a, trap, ang = torch.split(
            self.in_proj(x), [self.d_inner] * 2 + [self.n] * 2 + [self.h] * 3 + [self.r], dim=-1
        )
        dt = torch.nn.functional.softplus(dd_dt.float())
        adt = -torch.nn.functional.softplus(dd_a.float()).clamp(min=1e-4) * dt
        angles = (torch.tanh(ang.float()) * math.pi)[:, :, None, :].expand(b, t, self.h, self.r)
        q = torch.nn.functional.rms_norm(q, (self.n,))[:, :, None]
        k = torch.nn.functional.rms_norm(k, (self.n,))[:, :, None]
        y = mamba3_siso(
            q, k, xs.view(b, t, self.h, self.p), adt, dt, torch.sigmoid(trap.float()), self.q_bias, self.k_bias,
            angles, self.D, z.view(b, t, self.h, self.p), chunk_size=16, backend=self.backend,
        )  # fmt: skip
        return self.out_proj(y.reshape(b, t, self.d_inner))


def _check_compiled_training(device: str, compile_backend: str, dtype=torch.float32, steps: int = 3) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = _TinyMixer().to(device)
    eager = _TinyMixer(backend="reference").to(device)
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True, backend=compile_backend)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(steps):
            x = torch.randn(2, 40, 32, device=device)
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                y = compiled(x)
                y_ref = eager(x)
            y.float().square().mean().backward()
            y_ref.float().square().mean().backward()
            assert_close(f"step{step} y", y_ref.float(), y.float(), 1e-4 if dtype == torch.float32 else 3e-2)
            grad = model.in_proj.weight.grad
            assert_close(f"step{step} dW_in", eager.in_proj.weight.grad, grad, 1e-4 if dtype == torch.float32 else 5e-2)
            model.zero_grad()
            eager.zero_grad()
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_compile_fullgraph_cpu_aot_eager():
    """Dynamo + AOTAutograd trace the custom ops (fake functions, autograd registration): 1 graph, 0 breaks."""
    _check_compiled_training("cpu", "aot_eager")


@pytest.mark.slow
def test_compile_fullgraph_cpu_inductor():
    _check_compiled_training("cpu", "inductor")


# ---------------------------------------------------------------------------------------------------------------
# GPU: realistic shapes, bf16 and fp32, and the compiled model
# ---------------------------------------------------------------------------------------------------------------

# bf16: every output/gradient within 2e-2 (measured on H100: y 3e-3, dq/dk/dv 4e-3, ddt 6e-3 at T=1024 and 1.1e-2 at
# T=4096), except the angle gradients: the rotation-rate gradient is dt * reverse-cumsum over T of
# (dq~ . J q~ + dk~ . J k~) and the initial angle's is the whole sum, long sums of bf16-rounded terms that mostly
# cancel (measured dangles 3.6e-2 / 8.3e-2 and dstate.angle 3.5e-2 / 7.5e-2 at T=1024 / 4096; 5e-6 in fp32).
# fp32 (tf32 off): 1e-4 (measured <= 3e-5).
GPU_CASES = [
    pytest.param(4096, torch.bfloat16, 2e-2, {"dangles": 0.15, "dstate.angle": 0.15}, id="T4096-bf16"),
    pytest.param(1024, torch.bfloat16, 2e-2, {"dangles": 0.08, "dstate.angle": 0.08}, id="T1024-bf16"),
    pytest.param(4096, torch.float32, 1e-4, {}, id="T4096-fp32"),
    pytest.param(1024, torch.float32, 1e-4, {}, id="T1024-fp32"),
]


@gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("seqlen,dtype,ratio,overrides", GPU_CASES)
def test_triton_gpu_realistic(seqlen, dtype, ratio, overrides):
    """Triton path vs the fp64 chunked reference on the same (dtype-rounded) inputs, for outputs, every input gradient
    and the final state (tolerances: GPU_CASES)."""
    inputs, state = make_inputs(batch=2, seqlen=seqlen, nheads=16, d_state=64, headdim=64, n_angles=16,
                                with_state=True, dtype=dtype, device="cuda", seed=4)  # fmt: skip
    inputs64 = {key: (x.double() if x is not None else None) for key, x in inputs.items()}
    state64 = Mamba3State(*(x.double() for x in state))
    ref = run_with_grads(mamba3_siso_chunked, inputs64, state64, chunk_size=64)
    prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:

        def fn(initial_state, **kw):
            return mamba3_siso(**kw, initial_state=initial_state, return_final_state=True, backend="triton")

        out = run_with_grads(fn, inputs, state)
    finally:
        torch.set_float32_matmul_precision(prec)
    compare_all(ref, out, ratio, overrides=overrides)


@gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_compile_fullgraph_gpu(dtype):
    _check_compiled_training("cuda", "inductor", dtype=dtype)
