"""One call under torch.profiler, summarised as the top GPU kernels by self time (shared by the benchmarks)."""

from __future__ import annotations

import torch


def profile_step(step, top: int = 15) -> dict:
    """One step under torch.profiler: the top GPU kernels (CPU ops on a CPU-only run) by self time, with shares."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    events = prof.key_averages()
    on_gpu = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
    if on_gpu:
        timed = [(e.key, e.self_device_time_total, e.count) for e in on_gpu]
    else:
        timed = [(e.key, e.self_cpu_time_total, e.count) for e in events]
    total = sum(t for _, t, _ in timed) or 1.0
    timed.sort(key=lambda r: -r[1])
    return dict(clock="gpu kernels" if on_gpu else "cpu ops", total_ms=total / 1e3,
                top=[dict(name=k[:120], ms=t / 1e3, calls=n, share=t / total) for k, t, n in timed[:top]])
