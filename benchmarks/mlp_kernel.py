"""The MLP with its activation in the matmuls' epilogues (``golf::mlp_act``) against the unfused MLP as the model runs it
(``torch.compile``: cuBLAS matmuls and Inductor's activation kernels), at the training configs' shapes, in one run.

    python benchmarks/mlp_kernel.py [--shapes hybrid baseline] [--sweep] [--out benchmarks/results/mlp_kernel.json]

Shapes (one micro-batch): hybrid_sp1024 M 131,072 tokens (32 x 4096), D 512, F 1536, LeakyReLU(0.5)²; baseline_sp1024
M 65,536 (64 x 1024), D 512, F 1024, ReLU². bf16 operands. Columns: GPU ms of the forward and of the forward+backward
(summed kernel time under torch.profiler, mean of 10 calls, as ``ssm_kernel.py``), and the relative RMS difference of
output and gradients from the unfused path. ``--sweep`` times the two Triton kernels alone over tile sizes, warps and
stages and lists the best first, against cuBLAS's matmul of the same shape plus the unfused activation kernel; copy a
winner into ``LAUNCH_CONFIG`` (``golf/kernels/mlp_act/triton_mlp.py``) and re-run the GPU tests. Needs a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from provenance import code_commit  # benchmarks/provenance.py, beside this script
from ssm_kernel import backward_step, gpu_ms  # benchmarks/ssm_kernel.py

SHAPES = {"hybrid": (131_072, 512, 1536, 0.5), "baseline": (65_536, 512, 1024, 0.0)}


def unfused(x, w1, w2, slope):
    return F.linear(F.leaky_relu(F.linear(x, w1), slope).square(), w2)


def operands(m: int, d: int, f: int):
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, d, device="cuda", generator=gen).bfloat16()
    w1 = (torch.randn(f, d, device="cuda", generator=gen) / d**0.5).bfloat16()
    w2 = (torch.randn(d, f, device="cuda", generator=gen) / f**0.5).bfloat16()
    dy = torch.randn(m, d, device="cuda", generator=gen).bfloat16()
    return x, w1, w2, dy


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def compare(name: str) -> list[dict]:
    """The op and the compiled unfused MLP, forward and forward+backward, at one shape."""
    from golf.kernels.mlp_act import mlp_act

    m, d, f, slope = SHAPES[name]
    x, w1, w2, dy = operands(m, d, f)
    paths = {"unfused, torch.compile": torch.compile(unfused, fullgraph=True), "golf::mlp_act": mlp_act}
    rows, ref = [], None
    for label, fn in paths.items():
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2)]
        step = backward_step(lambda fn=fn, leaves=leaves: fn(*leaves, slope), leaves, dy)
        for _ in range(3):  # compile, autotune, warm the caches
            step()
        with torch.no_grad():
            fwd_ms = gpu_ms(lambda fn=fn, leaves=leaves: fn(*leaves, slope))
        result = [fn(*leaves, slope).detach(), *(t.grad for t in leaves)]
        ref = ref or result
        rows.append(dict(shape=name, path=label, fwd_ms=fwd_ms, fwd_bwd_ms=gpu_ms(step),
                         rel_diff={k: rel(o, r) for k, o, r in zip(("y", "dx", "dw1", "dw2"), result, ref)}))
    return rows


def sweep(name: str) -> list[dict]:
    """Each Triton kernel alone over launch settings, next to cuBLAS's matmul plus the unfused activation kernel."""
    from golf.kernels.mlp_act import triton_mlp
    from golf.kernels.mlp_act.reference import activation, activation_grad

    m, d, f, slope = SHAPES[name]
    x, w1, w2, dy = operands(m, d, f)
    h = x @ w1.t()
    act, act_grad = torch.compile(activation), torch.compile(activation_grad)
    rows = [dict(shape=name, kernel="fwd", config="cuBLAS mm + activation kernel",
                 ms=gpu_ms(lambda: act(x @ w1.t(), slope))),
            dict(shape=name, kernel="bwd", config="cuBLAS mm + activation-gradient kernel",
                 ms=gpu_ms(lambda: act_grad(dy @ w2, h, slope).bfloat16()))]
    shipped = {k: dict(v) for k, v in triton_mlp.LAUNCH_CONFIG.items()}
    for kernel, (bm, bn, bk, warps, stages) in itertools.product(
        ("fwd", "bwd"), itertools.product((64, 128), (128, 256), (64,), (4, 8), (3, 4))
    ):
        cfg = dict(bm=bm, bn=bn, bk=bk, group_m=8, num_warps=warps, num_stages=stages)
        triton_mlp.LAUNCH_CONFIG[kernel] = cfg
        call = (lambda: triton_mlp.fc_act_fwd_triton(x, w1, slope)) if kernel == "fwd" else (
            lambda: triton_mlp.dgrad_act_bwd_triton(dy, w2, h, slope))
        try:
            call()
            ms = gpu_ms(call)
        except Exception as e:  # noqa: BLE001  (a setting that does not fit in shared memory: shown, not fatal)
            ms, cfg = float("nan"), dict(cfg, error=str(e).splitlines()[0][:80])
        rows.append(dict(shape=name, kernel=kernel, config=cfg, shipped=cfg == shipped[kernel], ms=ms))
        triton_mlp.LAUNCH_CONFIG[kernel] = shipped[kernel]
    return sorted(rows, key=lambda r: (r["kernel"], r["ms"] != r["ms"], r["ms"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--sweep", action="store_true", help="also time the two kernels alone over launch settings")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/mlp_kernel.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("mlp_kernel.py times GPU kernels: run it on a machine with a CUDA GPU")
    rows = [row for name in args.shapes for row in compare(name)]
    print(f"{'shape':<10}{'path':<26}{'fwd ms':>9}{'fwd+bwd ms':>12}  rel. diff from the unfused path (y, dx, dw1, dw2)")
    for r in rows:
        diffs = " ".join(f"{v:.1e}" for v in r["rel_diff"].values())
        print(f"{r['shape']:<10}{r['path']:<26}{r['fwd_ms']:>9.3f}{r['fwd_bwd_ms']:>12.3f}  {diffs}")
    swept = [row for name in args.shapes for row in sweep(name)] if args.sweep else []
    for r in swept:
        print(f"{r['shape']:<10}{r['kernel']:<5}{r['ms']:>9.3f} ms  {'(shipped) ' if r.get('shipped') else ''}{r['config']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(
        device=torch.cuda.get_device_name(), torch=torch.__version__, commit=code_commit(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(), rows=rows, sweep=swept), indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
