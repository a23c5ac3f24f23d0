"""Registers, spills and programs per SM of golf's Triton kernels as compiled for an H100/H200 (sm_90a), without a GPU.

    python benchmarks/kernel_registers.py [--out benchmarks/results/kernel_registers.json]

Each kernel is compiled at the hybrid's training shape (H 16, N = P = 64, chunk 64, R 16, bf16 operands) with its
shipped launch settings (``LAUNCH_CONFIG``) and the specialisation Triton's JIT gives it there (pointers, sizes and
row strides divisible by 16, the angles' unit stride a constant), and its PTX is run through Triton's own ``ptxas -v``.
These are static facts, not timings: the register-bound kernels (``_bwd_dqkvg``) are tuned against them, and a kernel
that spills, or whose registers cap the programs an SM holds, shows it here before any GPU time is spent. The
variants the sweeps try and the other paths (state in, bare GLA core) are compiled too, so the script also checks
that every kernel compiles for sm_90 (``tests/kernels/test_kernels_compile.py`` runs it). Needs TRITON_INTERPRET
unset.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

REGISTERS_PER_SM, MAX_PROGRAMS_PER_SM, MAX_WARPS_PER_SM, SHARED_PER_SM = 65536, 32, 64, 227 * 1024
INTS = {"T", "NT", "s_ab", "s_at", "s_ah", "s_vt", "s_zt", "M", "N", "K", "s_xm", "s_wn", "s_dym", "s_wk"}
BF16 = {"q", "k", "v", "z", "y", "u", "dy", "dz", "q_rot", "k_w", "dq_rot", "dk_w", "do", "dv", "hs", "dhs",
        "x", "w", "h", "act", "dh"}


def kernel_rows() -> list[tuple[str, object, dict, dict]]:
    """(label, kernel, constexprs, launch options): the shipped settings first, then the other paths and variants."""
    from golf.kernels.ssm_scan import triton_chunk as tc
    from golf.kernels.ssm_scan import triton_prologue as tp

    pro_cfg, bt = tp.LAUNCH_CONFIG, tp.LAUNCH_CONFIG["bt"]
    pro = dict(H=16, G=1, N=64, R=16, RP=16, BT=bt, HAS_ROT=True, FAST_TRIG=bool(pro_cfg["fast_trig"]), s_ar=1,
               PREFETCH=bool(pro_cfg["bwd_prefetch"]))
    light = dict(num_warps=pro_cfg["num_warps"])
    rows = [
        ("shipped", tp._theta_block_sums, dict(H=16, R=16, RP=16, BT=bt, CB=pro_cfg["cb"], s_ar=1), light),
        ("shipped", tp._block_scan, dict(RP=16, SB=tp.SCAN_BLOCKS, REVERSE=False), light),
        ("shipped", tp._block_scan, dict(RP=16, SB=tp.SCAN_BLOCKS, REVERSE=True), light),
        ("shipped", tp._prologue_fwd, pro, dict(num_warps=pro_cfg["fwd_num_warps"])),
        ("shipped", tp._prologue_bwd, dict(pro, HAS_DDIAG=True), dict(num_warps=pro_cfg["bwd_num_warps"])),
        ("prefetch " + ("off" if pro_cfg["bwd_prefetch"] else "on"), tp._prologue_bwd,
         dict(pro, HAS_DDIAG=True, PREFETCH=not pro_cfg["bwd_prefetch"]), dict(num_warps=pro_cfg["bwd_num_warps"])),
        ("shipped", tp._prologue_bwd_fix, dict(H=16, R=16, RP=16, BT=bt, HB=pro_cfg["fix_heads"], HAS_ROT=True,
                                               s_ar=1), light),  # fmt: skip
    ]
    gla = dict(H=16, N=64, P=64, BT=64, DOT_PREC="tf32")

    def launch(name: str) -> dict:
        return {key: tc.LAUNCH_CONFIG[name][key] for key in ("num_warps", "num_stages")}

    def chunks(name: str) -> dict:
        return {"CHUNKS": tc.LAUNCH_CONFIG[name]["chunks"]} if "chunks" in tc.LAUNCH_CONFIG[name] else {}

    rows += [
        ("shipped", tc._fwd_states, dict(gla, BV=tc.LAUNCH_CONFIG["fwd_states"]["bv"], HAS_H0=False),
         launch("fwd_states")),
        ("shipped", tc._fwd_output, dict(gla, HAS_SKIP=True, HAS_Z=True, **chunks("fwd_output")), launch("fwd_output")),
        ("shipped", tc._bwd_output_stage, dict(H=16, P=64, BT=64, HAS_SKIP=True, HAS_Z=True),
         launch("bwd_output_stage")),
        ("shipped", tc._bwd_states, dict(gla, BV=tc.LAUNCH_CONFIG["bwd_states"]["bv"], HAS_DHT=False),
         launch("bwd_states")),
        ("shipped", tc._bwd_dqkvg, dict(gla, HAS_SKIP=True, **chunks("bwd_dqkvg")), launch("bwd_dqkvg")),
        # the other paths and the sweeps' variants
        ("no rotation", tp._prologue_fwd, dict(pro, R=0, RP=1, HAS_ROT=False),
         dict(num_warps=pro_cfg["fwd_num_warps"])),
        ("no rotation", tp._prologue_bwd, dict(pro, R=0, RP=1, HAS_ROT=False, HAS_DDIAG=True),
         dict(num_warps=pro_cfg["bwd_num_warps"])),
        ("no rotation", tp._prologue_bwd_fix, dict(H=16, R=16, RP=16, BT=bt, HB=1, HAS_ROT=False, s_ar=1), light),
        ("libdevice trig", tp._prologue_fwd, dict(pro, FAST_TRIG=False), dict(num_warps=pro_cfg["fwd_num_warps"])),
        ("libdevice trig", tp._prologue_bwd, dict(pro, FAST_TRIG=False, HAS_DDIAG=True),
         dict(num_warps=pro_cfg["bwd_num_warps"])),
        ("8 warps, register cap 128", tp._prologue_bwd, dict(pro, HAS_DDIAG=True), dict(num_warps=8, maxnreg=128)),
        ("state in and out", tc._fwd_states, dict(gla, BV=64, HAS_H0=True), launch("fwd_states")),
        ("state in and out", tc._bwd_states, dict(gla, BV=32, HAS_DHT=True), launch("bwd_states")),
        ("bare GLA core", tc._fwd_output, dict(gla, HAS_SKIP=False, HAS_Z=False, **chunks("fwd_output")),
         launch("fwd_output")),
        ("bare GLA core", tc._bwd_dqkvg, dict(gla, HAS_SKIP=False, **chunks("bwd_dqkvg")), launch("bwd_dqkvg")),
    ]
    for name, fn in (("fwd_output", tc._fwd_output), ("bwd_dqkvg", tc._bwd_dqkvg)):
        stage = dict(HAS_SKIP=True, HAS_Z=True) if name == "fwd_output" else dict(HAS_SKIP=True)
        rows.append(("4-chunk loop, num_stages 3", fn, dict(gla, **stage, CHUNKS=4), dict(num_warps=4, num_stages=3)))
    # the MLP's matmuls with the activation in their epilogues (golf/kernels/mlp_act), bf16, LeakyReLU(0.5)²
    from golf.kernels.mlp_act import triton_mlp as tm

    for name, fn in (("fwd", tm._fc_act_fwd), ("bwd", tm._dgrad_act_bwd)):
        cfg = tm.LAUNCH_CONFIG[name]
        tiles = dict(SLOPE=0.5, BM=cfg["bm"], BN=cfg["bn"], BK=cfg["bk"], GROUP_M=cfg["group_m"], DOT_PREC="tf32")
        rows.append(("shipped", fn, tiles, {key: cfg[key] for key in ("num_warps", "num_stages")}))
    return rows


def compile_usage(fn, constexprs: dict, options: dict) -> dict:
    """Compile ``fn`` for sm_90a as the JIT specialises it at the training shape; ptxas's resource report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = {key: value for key, value in constexprs.items() if key in fn.arg_names}
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = "i32" if name in INTS else "*bf16" if name in BF16 else "*fp32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if signature[name] != "constexpr"}
    kernel = triton.compile(ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
                            target=GPUTarget("cuda", 90, 32), options=options)  # fmt: skip
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / f"{fn.__name__}.ptx"
        ptx.write_text(kernel.asm["ptx"])
        cap = [f"--maxrregcount={options['maxnreg']}"] if options.get("maxnreg") else []
        report = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", *cap, str(ptx), "-o", str(Path(tmp) / "k.cubin")],
                                capture_output=True, text=True, check=True).stderr  # fmt: skip

    def number(pattern: str) -> int:
        match = re.search(pattern, report)
        return int(match.group(1)) if match else 0

    regs = number(r"Used (\d+) registers")
    warps = options.get("num_warps", 4)
    shared = int(kernel.metadata.shared)
    per_sm = min(MAX_PROGRAMS_PER_SM, MAX_WARPS_PER_SM // warps,
                 REGISTERS_PER_SM // (-(-regs // 8) * 8 * 32 * warps) if regs else MAX_PROGRAMS_PER_SM,
                 SHARED_PER_SM // (shared + 1024))  # fmt: skip
    return dict(registers=regs, spill_stores=number(r"(\d+) bytes spill stores"),
                spill_loads=number(r"(\d+) bytes spill loads"), stack=number(r"(\d+) bytes stack frame"),
                shared=shared, warps=warps, programs_per_sm=per_sm)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/kernel_registers.json"))
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("kernel_registers.py compiles the kernels: run it with TRITON_INTERPRET unset")
    import triton
    from provenance import code_commit  # benchmarks/provenance.py, beside this script

    rows = []
    print(f"{'kernel':<20} {'settings':<28} {'launch':<24} {'regs':>5} {'spill st/ld B':>14} {'stack B':>8} "
          f"{'smem B':>7} {'progs/SM':>8}")  # fmt: skip
    for label, fn, constexprs, options in kernel_rows():
        usage = compile_usage(fn, constexprs, options)
        launch = " ".join(f"{key}={value}" for key, value in options.items())
        rows.append(dict(kernel=fn.__name__, settings=label, launch=options, **usage,
                         constexprs={k: v for k, v in constexprs.items() if isinstance(v, (int, str))}))  # fmt: skip
        print(f"{fn.__name__:<20} {label:<28} {launch:<24} {usage['registers']:>5} "
              f"{usage['spill_stores']:>6}/{usage['spill_loads']:<7} {usage['stack']:>8} {usage['shared']:>7} "
              f"{usage['programs_per_sm']:>8}", flush=True)  # fmt: skip
    result = dict(target="sm_90a (static compile, no GPU)", triton=triton.__version__, commit=code_commit(),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), rows=rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"compiled {len(rows)} kernels\nwrote {args.out}")


if __name__ == "__main__":
    main()
