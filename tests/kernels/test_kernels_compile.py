"""Every Triton kernel of golf compiles for an H100 (sm_90) on a machine without a GPU.

The interpreter (``TRITON_INTERPRET=1``) runs kernels as NumPy and skips the compiler's type checks, so a kernel can
pass every CPU test and still fail to compile on the GPU (a loop-carried variable whose type changes inside a loop
did exactly that). Triton's compiler needs no GPU for a given target: the kernels are compiled here to PTX and
cubin with the realistic constexprs and dtypes of the training shape (H 16, N = P 64, chunk 64, R 16, bf16
operands). Runs in a subprocess because the kernels must be imported without ``TRITON_INTERPRET``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

triton = pytest.importorskip("triton")

COMPILE_ALL = textwrap.dedent('''
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from golf.kernels.ssm_scan import triton_chunk as tc, triton_prologue as tp

    INTS = {"T", "NT", "s_ab", "s_at", "s_ah", "s_ar", "s_vt", "s_zt"}
    BF16 = {"q", "k", "v", "z", "y", "dy", "dz", "q_rot", "k_w", "dq_rot", "dk_w", "do", "dv", "hs"}

    def compile_kernel(fn, constexprs, **options):
        sig = {}
        for name in fn.arg_names:
            if name in constexprs:
                sig[name] = "constexpr"
            elif name in INTS:
                sig[name] = "i32"
            else:
                sig[name] = "*bf16" if name in BF16 else "*fp32"
        triton.compile(ASTSource(fn, sig, constexprs=constexprs), target=GPUTarget("cuda", 90, 32), options=options)
        print("compiled", fn.__name__, sorted(constexprs.items()), options)

    shape = dict(H=16, N=64, BT=tp.LAUNCH_CONFIG["bt"])
    for rot in (True, False):
        pro = dict(shape, G=1, R=16 if rot else 0, RP=16 if rot else 1, HAS_ROT=rot, FAST_TRIG=False)
        compile_kernel(tp._prologue_fwd, pro)
        compile_kernel(tp._prologue_bwd, dict(pro, HAS_DDIAG=True))
        compile_kernel(tp._prologue_bwd, dict(pro, HAS_DDIAG=True), num_warps=8, maxnreg=128)  # bwd_maxnreg
        for hb in (1, 8):
            compile_kernel(tp._prologue_bwd_fix, dict(H=16, R=16, RP=16, BT=shape["BT"], HB=hb, HAS_ROT=rot))
    # fast_trig: inline PTX, never run by the interpreter
    fast = dict(shape, G=1, R=16, RP=16, HAS_ROT=True, FAST_TRIG=True)
    compile_kernel(tp._prologue_fwd, fast)
    compile_kernel(tp._prologue_bwd, dict(fast, HAS_DDIAG=True))
    compile_kernel(tp._theta_block_sums, dict(H=16, R=16, RP=16, BT=shape["BT"], CB=8))
    for reverse in (False, True):
        compile_kernel(tp._block_scan, dict(RP=16, SB=tp.SCAN_BLOCKS, REVERSE=reverse))
    gla = dict(H=16, N=64, P=64, BT=64, DOT_PREC="tf32")
    compile_kernel(tc._fwd_states, dict(gla, BV=64, HAS_H0=True))
    compile_kernel(tc._bwd_states, dict(gla, BV=32, HAS_DHT=True))
    for stage in (True, False):  # with the output stage (Mamba-3) and without (the bare GLA core)
        for name, fn, flags in (("fwd_output", tc._fwd_output, dict(HAS_SKIP=stage, HAS_Z=stage)),
                                ("bwd_dqkvg", tc._bwd_dqkvg, dict(HAS_SKIP=stage))):
            cfg = tc.LAUNCH_CONFIG[name]  # as launched, and a software-pipelined loop over 4 chunks (the sweep's)
            compile_kernel(fn, dict(gla, **flags, CHUNKS=cfg["chunks"]), num_warps=cfg["num_warps"],
                           num_stages=cfg["num_stages"])
            compile_kernel(fn, dict(gla, **flags, CHUNKS=4), num_warps=4, num_stages=3)
    compile_kernel(tc._bwd_output_stage, dict(H=16, P=64, BT=64, HAS_SKIP=True, HAS_Z=True))
''')


def test_every_triton_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE_ALL], env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error" in line]
    assert proc.returncode == 0, "\n".join(errors[-5:]) or proc.stderr[-2000:]
    assert proc.stdout.count("compiled") == 26, proc.stdout
