"""Benchmark of the Mamba-3 SISO scan: golf's Triton kernels vs golf's PyTorch reference (eager and compiled) and
peers, forward and forward+backward, on one GPU, in one run and one table.

    python benchmarks/ssm_kernel.py [--out benchmarks/results/ssm_kernel.json] [--peer-path DIR ...]

Shapes: (batch 8, L 4096) and (batch 32, L 1024), heads 16, headdim 64, d_state 64, 16 rotation angles, bf16
q/k/v/z (fp32 decays). Two clocks per row:
  * ms: the median of ``triton.testing.do_bench``, host to host. It includes whatever the host adds (Python
    wrappers, autograd, kernel launches): when the host takes longer to queue a call than the GPU takes to run it,
    this is host time.
  * GPU ms: the sum of the call's kernel durations under torch.profiler (mean of 10 calls), i.e. the time the GPU is
    busy. In a training step the GPU queue is deep and the host runs ahead, so this is what the op costs there.

How the rates are counted
  * TB/s: the bytes of every input tensor read once and every output written once (forward), plus for
    forward+backward the output gradient read, every input read again and every input gradient written. It is the
    minimum traffic of the op's interface, not what the kernels actually move (intermediates such as chunk states are
    not counted), so it is a lower bound and comparable between rows of one shape only where the interfaces match.
  * TFLOP/s, scan rows: the matmul FLOPs of the chunked algorithm with chunk C = 64, per token and head:
    forward ``2C(N + P) + 4NP`` (intra-chunk q k^T and A v, q h^T, chunk-state update), backward
    ``2C(3N + 2P) + 10NP`` (recomputed states, dh, A, dA, dq, dk, dv). The same nominal count is used for every scan
    row (golf, Mamba-3, Mamba-2 SSD, fla simple GLA) so the rates compare the time for one problem.
  * TFLOP/s, attention row: causal attention, forward ``2 B h L^2 d`` (half of 4 B h L^2 d), backward 2.5x forward.

Peers are optional (printed as "not installed"): ``mamba_ssm`` (Mamba-3 SISO combined, Mamba-2 chunk scan
combined), ``fla`` (chunk_simple_gla) and PyTorch SDPA (flash backend, causal, 8 heads x 64 = d_model 512). They are
imported from the environment or from ``--peer-path`` directories (prepended to sys.path).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import traceback
from pathlib import Path

import torch
from provenance import code_commit  # benchmarks/provenance.py, beside this script

CHUNK = 64
SHAPES = [(8, 4096), (32, 1024)]
NHEADS, HEADDIM, D_STATE, N_ANGLES = 16, 64, 64, 16


# ---------------------------------------------------------------------------------------------------------------
# inputs and counting
# ---------------------------------------------------------------------------------------------------------------


def make_inputs(batch: int, seqlen: int, device: str = "cuda") -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    h, p, n, r = NHEADS, HEADDIM, D_STATE, N_ANGLES
    bf = torch.bfloat16

    def rnd(*shape, dtype=bf, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    dt = torch.nn.functional.softplus(rnd(batch, seqlen, h, dtype=torch.float32) - 3.0)
    a = -torch.rand(h, generator=g, device=device) - 0.5
    return dict(
        q=rnd(batch, seqlen, 1, n, scale=n**-0.5),
        k=rnd(batch, seqlen, 1, n, scale=n**-0.5),
        v=rnd(batch, seqlen, h, p),
        adt=dt * a,
        dt=dt,
        trap=torch.sigmoid(rnd(batch, seqlen, h, dtype=torch.float32)),
        q_bias=torch.ones(h, n, device=device),
        k_bias=torch.ones(h, n, device=device),
        angles=rnd(batch, seqlen, h, r, dtype=torch.float32, scale=math.pi),
        D=torch.ones(h, device=device),
        z=rnd(batch, seqlen, h, p),
    )


def in_proj_columns(z: torch.Tensor, v: torch.Tensor, d_state: int, n_angles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z and v laid out as the mixer passes them: column slices of one input-projection output ``[B, T, 2 H P + 2 N
    + 3 H + R]`` (z, x, B, C, dt, A, trap, angles), read by the kernels at that row stride; leaves."""
    b, t, h, p = v.shape
    buf = torch.zeros(b, t, 2 * h * p + 2 * d_state + 3 * h + n_angles, dtype=v.dtype, device=v.device)
    buf[..., : h * p] = z.reshape(b, t, h * p)
    buf[..., h * p : 2 * h * p] = v.reshape(b, t, h * p)
    return buf[..., : h * p].view(b, t, h, p).detach(), buf[..., h * p : 2 * h * p].view(b, t, h, p).detach()


def mixer_layout(inp: dict) -> tuple[dict, list]:
    """The inputs as the mixer passes them -- v and z in_proj column slices (:func:`in_proj_columns`), angles one
    row per step shared by the heads (a stride-0 ``expand``) -- and their leaves (new tensors)."""
    b, t, h, r = inp["angles"].shape
    out = {key: x.detach().clone().requires_grad_() for key, x in inp.items() if key not in ("v", "z", "angles")}
    z, v = in_proj_columns(inp["z"].detach(), inp["v"].detach(), D_STATE, r)
    out.update(v=v.requires_grad_(), z=z.requires_grad_())
    angles = inp["angles"][:, :, :1].detach().clone().requires_grad_()
    return dict(out, angles=angles.expand(b, t, h, r)), [*out.values(), angles]


def scan_flops(batch: int, seqlen: int) -> tuple[float, float]:
    per_token_fwd = 2 * CHUNK * (D_STATE + HEADDIM) + 4 * D_STATE * HEADDIM
    per_token_bwd = 2 * CHUNK * (3 * D_STATE + 2 * HEADDIM) + 10 * D_STATE * HEADDIM
    tokens = batch * seqlen * NHEADS
    return tokens * per_token_fwd, tokens * (per_token_fwd + per_token_bwd)


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class Case:
    """One benchmarked implementation at one shape: ``fn()`` returns the output to differentiate."""

    def __init__(self, name: str, fn, leaves: list, flops: tuple[float, float]):
        self.name, self.fn, self.leaves, self.flops = name, fn, [x for x in leaves if x is not None], flops


# ---------------------------------------------------------------------------------------------------------------
# implementations
# ---------------------------------------------------------------------------------------------------------------


def golf_cases(inp: dict, flops) -> list:
    from golf.kernels.ssm_scan import mamba3_siso
    from golf.kernels.ssm_scan.op import gla_chunk

    def call(backend):
        return lambda: mamba3_siso(**inp, chunk_size=CHUNK, backend=backend)

    def compiled(backend, inputs=inp):
        fn = torch.compile(lambda **kw: mamba3_siso(**kw, chunk_size=CHUNK, backend=backend), fullgraph=True,
                           dynamic=False)
        return lambda: fn(**inputs)

    b, t, h = inp["v"].shape[:3]
    gla_in = dict(
        q=inp["q"].expand(b, t, h, D_STATE).contiguous().detach().requires_grad_(),
        k=inp["k"].expand(b, t, h, D_STATE).contiguous().detach().requires_grad_(),
        v=inp["v"].detach().clone().requires_grad_(),
        g=inp["adt"].detach().clone().requires_grad_(),
    )
    leaves = list(inp.values())
    mixer, mixer_leaves = mixer_layout(inp)
    return [
        Case("golf triton (eager wrapper)", call("triton"), leaves, flops),
        Case("golf triton (compiled wrapper)", compiled("triton"), leaves, flops),
        # the op as the mixer calls it (v, z in_proj column slices, angles shared by heads), beside contiguous inputs
        Case("golf triton (compiled wrapper, mixer layout)", compiled("triton", mixer), mixer_leaves, flops),
        Case("golf GLA core only (triton)",
             lambda: gla_chunk(gla_in["q"], gla_in["k"], gla_in["v"], gla_in["g"], None, CHUNK)[0],
             list(gla_in.values()), flops),  # fmt: skip
        Case("golf reference (eager)", call("reference"), leaves, flops),
        Case("golf reference (compiled)", compiled("reference"), leaves, flops),
    ]


def mamba3_case(inp: dict, flops) -> Case:
    mamba3_siso_combined = import_peer("mamba_ssm.ops.triton.mamba3.mamba3_siso_combined", "mamba3_siso_combined",
                                       bare_package=True)

    # its ADT/DT/Trap layout is (batch, nheads, seqlen)
    lay = {key: inp[key].detach().transpose(1, 2).contiguous().requires_grad_() for key in ("adt", "dt", "trap")}
    args = dict(inp)
    args.update(lay)

    def fn():
        return mamba3_siso_combined(args["q"], args["k"], args["v"], args["adt"], args["dt"], args["trap"],
                                    args["q_bias"], args["k_bias"], args["angles"], D=args["D"], Z=args["z"],
                                    chunk_size=CHUNK)  # fmt: skip

    return Case("mamba_ssm mamba3_siso_combined", fn, list(args.values()), flops)


def mamba2_case(inp: dict, flops) -> Case:
    mamba_chunk_scan_combined = import_peer("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined",
                                            bare_package=True)

    a = -torch.ones(NHEADS, device=inp["v"].device).requires_grad_()
    dt = inp["dt"].detach().clone().requires_grad_()

    def fn():
        return mamba_chunk_scan_combined(inp["v"], dt, a, inp["k"], inp["q"], chunk_size=CHUNK, D=inp["D"], z=inp["z"])

    return Case("mamba_ssm mamba_chunk_scan_combined (Mamba-2)", fn,
                [inp["v"], dt, a, inp["k"], inp["q"], inp["D"], inp["z"]], flops)  # fmt: skip


def fla_case(inp: dict, flops) -> Case:
    chunk_simple_gla = import_peer("fla.ops.simple_gla", "chunk_simple_gla")

    b, t, h = inp["v"].shape[:3]
    q = inp["q"].expand(b, t, h, D_STATE).contiguous().detach().requires_grad_()
    k = inp["k"].expand(b, t, h, D_STATE).contiguous().detach().requires_grad_()
    g = inp["adt"].detach().clone().requires_grad_()
    v = inp["v"]

    def fn():
        out = chunk_simple_gla(q, k, v, g=g, scale=1.0)
        return out[0] if isinstance(out, tuple) else out

    return Case("fla chunk_simple_gla", fn, [q, k, v, g], flops)


def sdpa_case(batch: int, seqlen: int, device: str = "cuda") -> Case:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, d = 8, 64
    q, k, v = (torch.randn(batch, heads, seqlen, d, device=device, dtype=torch.bfloat16).requires_grad_()
               for _ in range(3))  # fmt: skip

    def fn():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    fwd = 2.0 * batch * heads * seqlen**2 * d
    return Case("torch SDPA flash causal (8x64)", fn, [q, k, v], (fwd, 3.5 * fwd))


# ---------------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------------


def time_case(case: Case, warmup: int, rep: int) -> dict:
    from triton.testing import do_bench

    torch._dynamo.reset()  # compiled rows share one lambda: start each from an empty cache (no recompile limit)
    with torch.no_grad():
        out = case.fn()  # compiles / autotunes the no-grad variant outside the timing
    in_bytes = nbytes(case.leaves)
    fwd_bytes = in_bytes + nbytes([out])
    grad_bytes = nbytes([x for x in case.leaves if x.requires_grad])
    bwd_bytes = fwd_bytes + nbytes([out]) + in_bytes + grad_bytes
    dy = torch.randn_like(out)

    def fwd():
        with torch.no_grad():
            case.fn()

    def fwd_bwd():
        case.fn().backward(dy)

    fwd_bwd()  # compile / autotune outside the timing
    grads = [x for x in case.leaves if x.requires_grad]
    t_fwd = do_bench(fwd, warmup=warmup, rep=rep, return_mode="median")
    t_all = do_bench(fwd_bwd, warmup=warmup, rep=rep, grad_to_none=grads, return_mode="median")
    return dict(
        fwd_gpu_ms=gpu_ms(fwd),
        fwdbwd_gpu_ms=gpu_ms(backward_step(case.fn, grads, dy)),
        fwd_ms=t_fwd,
        fwd_tbps=fwd_bytes / t_fwd / 1e9,
        fwd_tflops=case.flops[0] / t_fwd / 1e9,
        fwdbwd_ms=t_all,
        fwdbwd_tbps=bwd_bytes / t_all / 1e9,
        fwdbwd_tflops=case.flops[1] / t_all / 1e9,
    )


def backward_step(fn, leaves: list[torch.Tensor], cotangents):
    """A forward+backward of ``fn`` with fixed ``cotangents`` and fresh ``.grad`` (as do_bench's ``grad_to_none``):
    no gradient-accumulation kernels in what is timed."""

    def step():
        for x in leaves:
            x.grad = None
        torch.autograd.backward(fn(), cotangents)

    return step


def gpu_ms(call, reps: int = 10) -> float:
    """Mean summed kernel time of ``call`` in ms (torch.profiler), without the host's gaps between kernels."""
    from profiling import profile_step  # benchmarks/profiling.py, beside this script

    return profile_step(lambda: [call() for _ in range(reps)])["total_ms"] / reps


def profile_case(case: Case) -> dict:
    """The top GPU kernels of one forward+backward (after timing, so compiled and autotuned)."""
    from profiling import profile_step  # benchmarks/profiling.py, beside this script

    out = case.fn()
    dy = torch.randn_like(out)
    del out
    for x in case.leaves:  # as in the timing: no gradient accumulation kernels from earlier calls' .grad
        x.grad = None
    return profile_step(lambda: case.fn().backward(dy), top=20)


def import_peer(module: str, attr: str, bare_package: bool = False):
    """``from module import attr``. With ``bare_package``, if the package's ``__init__`` fails (mamba_ssm without its
    compiled CUDA extensions), retry with the top-level package registered empty, so that only the pure Triton
    submodules that the benchmark needs are loaded."""
    import importlib
    import importlib.util
    import types

    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError:
        if not bare_package:
            raise
        top = module.split(".")[0]
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]
        spec = importlib.util.find_spec(top)
        if spec is None or not spec.submodule_search_locations:
            raise
        pkg = types.ModuleType(top)
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules[top] = pkg
        return getattr(importlib.import_module(module), attr)


def case_makers(batch: int, seqlen: int) -> list:
    """(name, maker) pairs; a maker builds its Case (importing its peer) only when its row is timed."""
    inp = make_inputs(batch, seqlen)
    for x in inp.values():
        x.requires_grad_()
    flops = scan_flops(batch, seqlen)
    makers = [(c.name, lambda c=c: c) for c in golf_cases(inp, flops)]
    makers += [
        ("mamba_ssm mamba3_siso_combined", lambda: mamba3_case(inp, flops)),
        ("mamba_ssm mamba_chunk_scan_combined (Mamba-2)", lambda: mamba2_case(inp, flops)),
        ("fla chunk_simple_gla", lambda: fla_case(inp, flops)),
        ("torch SDPA flash causal (8x64)", lambda: sdpa_case(batch, seqlen)),
    ]
    return makers


def apply_launch_overrides(overrides: list[str]) -> dict:
    """``prologue.KEY=V`` sets ``triton_prologue.LAUNCH_CONFIG[KEY]``, ``KERNEL.KEY=V`` ``triton_chunk``'s
    ``LAUNCH_CONFIG[KERNEL][KEY]``; returns the applied overrides (recorded in the JSON)."""
    from golf.kernels.ssm_scan import triton_chunk, triton_prologue

    applied = {}
    for item in overrides:
        target, _, value = item.partition("=")
        kernel, _, key = target.partition(".")
        config = triton_prologue.LAUNCH_CONFIG if kernel == "prologue" else triton_chunk.LAUNCH_CONFIG.get(kernel)
        if config is None or key not in config or not value:
            raise SystemExit(f"--launch {item}: expected prologue.KEY=VALUE or KERNEL.KEY=VALUE with KERNEL one of "
                             f"{sorted(triton_chunk.LAUNCH_CONFIG)} and an existing KEY")
        config[key] = int(value)
        applied[target] = int(value)
    return applied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ssm_kernel.json"))
    parser.add_argument("--peer-path", action="append", default=[], help="directory prepended to sys.path for peers")
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetition time (ms)")
    parser.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                        help="time only the rows whose name contains one of these texts")
    parser.add_argument("--shapes", nargs="+", default=[f"{b}x{t}" for b, t in SHAPES], metavar="BxL",
                        help="shapes to time (default: %(default)s)")
    parser.add_argument("--launch", nargs="+", default=[], metavar="KERNEL.KEY=VALUE",
                        help="override golf's kernel launch settings for this run, e.g. prologue.bt=64 "
                             "or fwd_states.num_warps=2 (LAUNCH_CONFIG of triton_prologue / triton_chunk)")
    parser.add_argument("--profile", nargs="+", default=[], metavar="TEXT",
                        help="also profile one forward+backward of the rows whose name contains one of these texts "
                             "(top GPU kernels by self time, in the table's output and the JSON)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("ssm_kernel benchmark needs a CUDA GPU")
    for path in reversed(args.peer_path):
        sys.path.insert(0, str(Path(path).resolve()))
    import triton

    launch = apply_launch_overrides(args.launch)
    shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.shapes]
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    result = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        commit=code_commit(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        dtype="bfloat16",
        chunk_size=CHUNK,
        launch_overrides=launch,
        rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = f"{'implementation':<46} {'B x L':>9} | {'fwd ms':>8} {'TB/s':>6} {'TFLOP/s':>8} | " \
             f"{'f+b ms':>8} {'TB/s':>6} {'TFLOP/s':>8} | {'fwd GPU ms':>10} {'f+b GPU ms':>10}"  # fmt: skip
    print(f"device: {result['device']}  torch {torch.__version__}  triton {triton.__version__}")
    print(header)
    print("-" * len(header))
    for batch, seqlen in shapes:
        for name, make in case_makers(batch, seqlen):
            if args.only and not any(text in name for text in args.only):
                continue
            row = dict(name=name, batch=batch, seqlen=seqlen, nheads=NHEADS, headdim=HEADDIM, d_state=D_STATE)
            case, note = None, None
            try:
                case = make()
            except ImportError as err:
                note = f"not installed ({err.name or err})"
            except Exception as err:  # a peer that imports but cannot be set up (wrong version, no GPU support)
                note = f"unavailable: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
            if case is not None:
                try:
                    row.update(time_case(case, args.warmup, args.rep))
                    if any(text in name for text in args.profile):
                        row["profile"] = profile_case(case)
                except Exception as err:  # keep the table going: one broken peer must not hide the others
                    note = f"error: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
                    traceback.print_exc(file=sys.stderr)
                del case
                torch.cuda.empty_cache()
            shape = f"{batch}x{seqlen}"
            if note is None:
                print(f"{name:<46} {shape:>9} | {row['fwd_ms']:8.3f} {row['fwd_tbps']:6.2f} {row['fwd_tflops']:8.1f} | "
                      f"{row['fwdbwd_ms']:8.3f} {row['fwdbwd_tbps']:6.2f} {row['fwdbwd_tflops']:8.1f} | "
                      f"{row['fwd_gpu_ms']:10.3f} {row['fwdbwd_gpu_ms']:10.3f}")  # fmt: skip
            else:
                row["note"] = note
                print(f"{name:<46} {shape:>9} | {note}")
            for k in (row.get("profile") or {}).get("top", []):
                print(f"    {k['share']:6.1%} {k['ms']:8.3f} ms  x{k['calls']:<3} {k['name'][:90]}")
            rows.append(row)
            args.out.write_text(json.dumps(result, indent=2) + "\n")  # after every row: a crash keeps what ran
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
