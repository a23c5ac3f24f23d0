"""Sweep the launch parameters of golf's SSM scan kernels on one GPU, so that the settings in
``golf/kernels/ssm_scan/{triton_chunk,triton_prologue}.py`` (``LAUNCH_CONFIG``) are measured, not guessed.

    python benchmarks/kernel_configs.py [--batch 8] [--seqlen 4096] [--groups prologue ...]
        [--out benchmarks/results/kernel_configs.json]

Each group of settings is swept with the other groups at their current values. A candidate is timed on the
forward+backward of the part that runs it (GPU time: the summed kernel time under torch.profiler, mean of 10 calls,
as ``ssm_kernel.py``'s GPU-time column; host-to-host time mostly measured the host launching these small kernels, and
its spread between runs hid the differences between settings; the GLA core with its output stage (skip, z gate) for
the GLA kernels, the fused prologue op for the prologue kernels) and its outputs and gradients are compared with the
current setting's (relative RMS; a candidate that changes the numbers beyond the bf16 limit is marked and never
"best"). One table per group, fastest first, and the JSON; then copy the best settings into ``LAUNCH_CONFIG`` and
re-run the GPU tests. On a machine without a GPU the ops take their PyTorch fallbacks, so a CPU run only exercises
the script itself.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import time
from pathlib import Path

import torch
from provenance import code_commit  # benchmarks/provenance.py, beside this script
from ssm_kernel import CHUNK, backward_step, gpu_ms, in_proj_columns, make_inputs  # benchmarks/ssm_kernel.py

BF16_LIMIT = 2e-2  # relative RMS between two settings of the same bf16 computation (only the tiling differs)

GLA_GROUPS = {
    "fwd_states": dict(bv=[16, 32, 64], num_warps=[2, 4, 8], num_stages=[1, 2, 3]),
    "bwd_states": dict(bv=[16, 32, 64], num_warps=[2, 4, 8], num_stages=[1, 2, 3]),
    "fwd_output": dict(chunks=[1, 2, 4, 8], num_warps=[4], num_stages=[1, 3]),
    "bwd_output_stage": dict(num_warps=[2, 4, 8], num_stages=[1, 2]),
    "bwd_dqkvg": dict(chunks=[1, 2, 4], num_warps=[4], num_stages=[2, 3]),
}
# The ninth session's sweep (chunks per program added) at B 8 and 32, T 4096: 8 warps and num_stages 4 slower for
# both chunk-parallel kernels at every chunk count, num_stages 1 slower for their loops (chunks=1 is the loop-free
# kernel, shipped at 1 and 2 before), and _bwd_output_stage (at ~80% of the H200's bandwidth) equal within 0.01 ms in
# every setting, so those left the sweep and _bwd_output_stage kept one chunk per program.
# fast_trig 0 and the register cap did not win in the fourth session's sweep or the sixth session's A/B (RESULTS.md):
# they stay launch settings (ssm_kernel.py --launch) but leave the sweep. The seventh session's sweep found 1-warp
# heavy kernels at BT 16 fastest (one warp has no block-wide barriers at the per-head reductions and scans), its
# second sweep BT 8 (shipped); the eighth session's tried BT 4 (statically 148 registers for the one-warp backward,
# 228 at BT 8): 0.377 ms against BT 8's 0.307 at B 32, T 1024, so it left the sweep again. The tenth session's
# next-head prefetch in the backward (0.542 -> 0.500 ms at B 32, T 4096, BT 8, one warp) joins the sweep: at BT 16 or
# 2 warps it may not pay.
PROLOGUE_GROUP = dict(bt=[8, 16], num_warps=[1, 2], fwd_num_warps=[1, 2], bwd_num_warps=[1, 2],
                      bwd_maxnreg=[0], fast_trig=[1], fix_heads=[4, 8], bwd_prefetch=[0, 1])


def candidates(space: dict[str, list[int]]) -> list[dict[str, int]]:
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def cotangents(outs: tuple[torch.Tensor, ...], seed: int = 0) -> list[torch.Tensor]:
    """Fixed random upstream gradients, one per output."""
    g = torch.Generator(device=outs[0].device).manual_seed(seed)
    return [torch.randn(o.shape, generator=g, device=o.device, dtype=o.dtype) for o in outs]


def run_and_grads(fn, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """Outputs and every leaf's gradient of one forward+backward (fixed upstream gradients)."""
    for x in leaves:
        x.grad = None
    outs = fn()
    torch.autograd.backward(outs, cotangents(outs))
    return [*(o.detach().clone() for o in outs), *(x.grad.detach().clone() for x in leaves)]


def timed(fn, leaves: list[torch.Tensor]) -> float:
    """ms of forward+backward: GPU time on a GPU (after one untimed call that compiles), one host-clock run
    otherwise."""
    outs = fn()
    step = backward_step(fn, leaves, cotangents(outs))
    if outs[0].is_cuda:
        step()
        return gpu_ms(step)
    t0 = time.perf_counter()
    step()
    return (time.perf_counter() - t0) * 1e3


def sweep(name: str, config: dict, space: dict[str, list[int]], fn, leaves: list[torch.Tensor]) -> list[dict]:
    """Time every candidate of ``space`` written into ``config`` (restored afterwards), checked against the current."""
    current = dict(config)
    reference = run_and_grads(fn, leaves)
    rows = []
    try:
        for cand in candidates(space):
            config.update(cand)
            row = dict(group=name, **cand, current=all(current.get(k) == v for k, v in cand.items()))
            try:
                err = max(rel_rms(a, b) for a, b in zip(run_and_grads(fn, leaves), reference))
                row.update(ms=timed(fn, leaves), max_rel_rms=err, ok=err <= BF16_LIMIT)
            except Exception as e:  # a setting the compiler or the hardware refuses (shared memory, registers)
                row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}", ok=False)
            rows.append(row)
    finally:
        config.clear()
        config.update(current)
    rows.sort(key=lambda r: (not r["ok"], r.get("ms", float("inf"))))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/kernel_configs.json"))
    ap.add_argument("--groups", nargs="+", default=None, metavar="NAME",
                    help="sweep only these groups "
                         "(gla_fwd_states gla_fwd_output gla_bwd_output_stage gla_bwd_states gla_bwd_dqkvg prologue)")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from golf.kernels.ssm_scan import triton_chunk, triton_prologue
    from golf.kernels.ssm_scan.op import gla_chunk, mamba3_prologue

    inp = make_inputs(args.batch, args.seqlen, device=device)
    b, t, h = inp["v"].shape[:3]
    n = inp["q"].shape[-1]
    # z, v as the mixer passes them; a sweep's winner is still checked in the training step (RESULTS.md, ninth session)
    z, v = in_proj_columns(inp["z"], inp["v"], n, inp["angles"].shape[-1])
    gla = dict(q=inp["q"].expand(b, t, h, n).contiguous(), k=inp["k"].expand(b, t, h, n).contiguous(),
               v=v, g=inp["adt"].clone(), skip=inp["D"][None, None] - inp["dt"], z=z)
    gla_leaves = [x.requires_grad_() for x in gla.values()]
    pro_keys = ("q", "k", "dt", "trap", "q_bias", "k_bias", "angles")
    pro = {key: inp[key].detach().clone().requires_grad_() for key in pro_keys}

    def gla_fn():  # each part returns its differentiable outputs; the sweep feeds them fixed random gradients
        return gla_chunk(gla["q"], gla["k"], gla["v"], gla["g"], None, CHUNK, gla["skip"], gla["z"])[:1]

    def prologue_fn():
        return mamba3_prologue(*(pro[key] for key in pro_keys), torch.bfloat16)

    result = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu (PyTorch fallbacks: no kernel runs)",
                  torch=torch.__version__, commit=code_commit(),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  batch=args.batch, seqlen=args.seqlen, groups={})
    groups = [(f"gla_{name}", triton_chunk.LAUNCH_CONFIG[name], space, gla_fn, gla_leaves)
              for name, space in GLA_GROUPS.items()]
    groups.append(("prologue", triton_prologue.LAUNCH_CONFIG, PROLOGUE_GROUP, prologue_fn, list(pro.values())))
    groups = [g for g in groups if args.groups is None or g[0] in args.groups]
    print(f"device: {result['device']}  B {args.batch}  T {args.seqlen}  (* = current setting)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, config, space, fn, leaves in groups:
        rows = result["groups"][name] = sweep(name, config, space, fn, leaves)
        print(f"\n{name}", flush=True)
        for r in rows:
            setting = " ".join(f"{k}={r[k]}" for k in r if k not in ("group", "ms", "max_rel_rms", "ok", "current", "error"))
            status = r.get("error") or f"{r['ms']:8.3f} ms  rel-rms {r['max_rel_rms']:.1e}" + ("" if r["ok"] else "  CHANGED")
            print(f"  {'*' if r['current'] else ' '} {setting:<40} {status}", flush=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # after every group: a cut-off run keeps what ran
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
