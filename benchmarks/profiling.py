"""torch.profiler summaries shared by the benchmarks: the top GPU kernels by self time, and the window's wall time (so
that GPU-busy time / wall time shows how much of a step the GPU idled)."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

import torch

# Kernel families for the step's breakdown, first match wins (names as the CUDA profiler reports them): the SSM scan's
# kernels (golf's Triton kernels, the peers' mamba_ssm ones), attention (cuDNN/flash SDPA; before the matmuls, because
# FlashAttention-2's kernel names carry their CUTLASS template types), cuBLAS/CUTLASS matmuls and Inductor's matmul
# templates, Inductor's other kernels (elementwise, norms, reductions, the optimizer's fused updates), collectives,
# copies.
KERNEL_FAMILIES = (
    ("ssm scan", r"^_(fwd|bwd)_|^_prologue|^_theta|^_block_scan|mamba|_chunk_scan|_chunk_state|_state_passing|ssd"),
    ("attention", r"sdpa|flash|fmha"),
    ("matmul", r"nvjet|gemm|cutlass|xmma|cublas|^triton_tem_"),  # triton_tem_: Inductor's matmul templates (autotune)
    ("inductor", r"^triton_"),
    ("collectives", r"nccl"),
    ("copies and fills", r"copy|memcpy|memset|fill"),
)


class StepProfile:
    """A profiler window opened by ``start()`` and closed by ``finish()`` (which synchronises the GPU first), for a
    step whose beginning and end are hooks rather than one call (a Lightning step: batch end to batch end)."""

    def __init__(self, top: int = 25, trace: Path | None = None) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.top, self.trace, self._prof = top, trace, profile(activities=activities)

    def start(self) -> StepProfile:
        self._prof.__enter__()
        self._t0 = time.perf_counter()
        return self

    def finish(self) -> dict:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - self._t0) * 1e3
        self._prof.__exit__(None, None, None)
        if self.trace is not None:  # the whole timeline (Chrome trace format), for benchmarks/gpu_gaps.py
            self._prof.export_chrome_trace(str(self.trace))
        return summarize(self._prof.key_averages(), self.top, wall_ms)


def summarize(events, top: int, wall_ms: float) -> dict:
    """Top GPU kernels (CPU ops on a CPU-only run) by self time, with shares of the summed kernel time. Ranges that
    code marks with ``record_function`` (the optimizers' ``Optimizer.step#...``) are left out: on the GPU timeline they
    span the kernels inside them, which are counted already."""
    events = [e for e in events if not getattr(e, "is_user_annotation", False)]
    on_gpu = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
    if on_gpu:
        timed = [(e.key, e.self_device_time_total, e.count) for e in on_gpu]
    else:
        timed = [(e.key, e.self_cpu_time_total, e.count) for e in events]
    total = sum(t for _, t, _ in timed) or 1.0
    timed.sort(key=lambda r: -r[1])
    return dict(clock="gpu kernels" if on_gpu else "cpu ops", total_ms=total / 1e3, wall_ms=wall_ms,
                families=families(timed, total),
                top=[dict(name=k[:120], ms=t / 1e3, calls=n, share=t / total) for k, t, n in timed[:top]])


def family(name: str) -> str:
    """The :data:`KERNEL_FAMILIES` entry a kernel's name falls in, or "other"."""
    return next((label for label, pattern in KERNEL_FAMILIES if re.search(pattern, name, re.IGNORECASE)), "other")


def families(timed: list[tuple[str, float, int]], total: float) -> dict[str, dict]:
    """Time and share of the step's kernel time per family, largest first (every kernel counted, not only the top)."""
    ms: dict[str, float] = defaultdict(float)
    for name, t, _ in timed:
        ms[family(name)] += t
    return {f: {"ms": t / 1e3, "share": t / total} for f, t in sorted(ms.items(), key=lambda kv: -kv[1])}


def profile_step(step, top: int = 25, trace: Path | None = None) -> dict:
    """One call of ``step`` under torch.profiler (see :class:`StepProfile`)."""
    prof = StepProfile(top, trace).start()
    step()
    return prof.finish()
