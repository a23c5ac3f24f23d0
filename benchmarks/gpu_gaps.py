"""Where the GPU idles in a profiled step, and what the host was doing meanwhile, from a Chrome trace.

    python benchmarks/gpu_gaps.py trace_hybrid_sp1024_golf.json [--min-us 10] [--top 15]

The trace is one step written by ``benchmarks/train_step.py --profile --trace-dir DIR`` (torch.profiler's Chrome
export). The GPU timeline (kernels, copies, fills; all streams merged) is scanned for gaps of at least ``--min-us``
between the step's first and last GPU activity. Each gap is charged to the host: the CPU ops open on the thread that
launched the next GPU work, at the moment the gap began (outermost range, e.g. ``Optimizer.step#...`` or a compiled
region, and innermost op). When that launch came before the gap began, the gap is a GPU-side wait ("queued").
The host's lead (each kernel's start minus its launch) shows whether the host kept ahead of the GPU.
Blocking host calls (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, ``cudaEventSynchronize``, synchronous
``cudaMemcpy``) are listed with the ops that issued them: each empties the GPU's queue.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
from collections import defaultdict
from pathlib import Path

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_CATEGORIES = ("cpu_op", "user_annotation")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")  # Triton launches through the driver API
BLOCKING_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


class TraceError(ValueError):
    """A file that is not a profiled GPU step's Chrome trace."""


def load_events(path: Path) -> list[dict]:
    """The complete ("X") events of a Chrome trace (``.json`` or ``.json.gz``)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:  # missing, unreadable, not gzip, not JSON
        raise TraceError(f"cannot read it as a Chrome trace ({type(e).__name__}: {e})") from e
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise TraceError("no traceEvents list in it")
    return [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and "dur" in e]


def _correlation(e: dict) -> int | None:
    return (e.get("args") or {}).get("correlation")


class HostTimeline:
    """The host ranges (CPU ops and ``record_function`` annotations) of each thread, to ask which were open when."""

    def __init__(self, events: list[dict]) -> None:
        self.by_thread: dict[tuple, list[dict]] = defaultdict(list)
        for e in events:
            if e.get("cat") in HOST_CATEGORIES:
                self.by_thread[(e["pid"], e["tid"])].append(e)
        self.starts = {}
        for key, ops in self.by_thread.items():
            ops.sort(key=lambda e: e["ts"])
            self.starts[key] = [e["ts"] for e in ops]

    def open_at(self, thread: tuple, t: float) -> list[dict]:
        """Ranges of ``thread`` open at time ``t``, outermost (longest) first."""
        ops, starts = self.by_thread.get(thread, []), self.starts.get(thread, [])
        open_ops = [e for e in ops[: bisect.bisect_right(starts, t)] if e["ts"] + e["dur"] > t]
        return sorted(open_ops, key=lambda e: -e["dur"])


def _label(open_ops: list[dict]) -> str:
    if not open_ops:
        return "(no host range open)"
    outer, inner = open_ops[0]["name"], open_ops[-1]["name"]
    return outer if outer == inner else f"{outer} > {inner}"


def _spread(values: list[float]) -> dict[str, float]:
    """min / median / max (ms) of microsecond values, and the last one (the host's lead at the window's end)."""
    if not values:
        return {}
    ordered = sorted(values)
    return {"min": ordered[0] / 1e3, "median": ordered[len(ordered) // 2] / 1e3, "max": ordered[-1] / 1e3,
            "last": values[-1] / 1e3}  # fmt: skip


def analyse(events: list[dict], min_us: float = 10.0) -> dict:
    """GPU busy time, idle time and its gaps charged to host ranges, and the blocking host calls of one trace."""
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATEGORIES), key=lambda e: e["ts"])
    if not gpu:
        raise TraceError("no GPU kernels in it: profile on a CUDA machine")
    launches = {_correlation(e): e for e in events if e.get("cat") in LAUNCH_CATEGORIES and _correlation(e) is not None}
    host = HostTimeline(events)
    window = (gpu[0]["ts"], max(e["ts"] + e["dur"] for e in gpu))
    busy, idle, leads = 0.0, defaultdict(lambda: [0.0, 0]), []
    end = gpu[0]["ts"]
    for e in gpu:
        start, finish = e["ts"], e["ts"] + e["dur"]
        launch = launches.get(_correlation(e))
        if launch is not None:  # how far ahead the host launched it: near 0, the GPU waits for the host
            leads.append(start - launch["ts"])
        if start - end >= min_us:
            if launch is None:
                key = "(launch not in trace)"
            elif launch["ts"] <= end:
                key = "queued: GPU-side wait"
            else:
                key = _label(host.open_at((launch["pid"], launch["tid"]), end))
            idle[key][0] += start - end
            idle[key][1] += 1
        busy += max(0.0, finish - max(start, end))
        end = max(end, finish)
    blocking = defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") in LAUNCH_CATEGORIES and e["name"] in BLOCKING_CALLS:
            ops = host.open_at((e["pid"], e["tid"]), e["ts"])
            key = f"{e['name']} in {_label(ops)}"
            blocking[key][0] += e["dur"]
            blocking[key][1] += 1
    span = window[1] - window[0]
    return {
        "span_ms": span / 1e3, "busy_ms": busy / 1e3, "idle_ms": (span - busy) / 1e3,
        "host_lead_ms": _spread(leads),
        "gaps": sorted(((k, ms / 1e3, n) for k, (ms, n) in idle.items()), key=lambda r: -r[1]),
        "blocking": sorted(((k, ms / 1e3, n) for k, (ms, n) in blocking.items()), key=lambda r: -r[1]),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path, nargs="+")
    ap.add_argument("--min-us", type=float, default=10.0, help="shortest gap counted (microseconds)")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    for path in args.trace:
        try:
            r = analyse(load_events(path), args.min_us)
        except TraceError as e:
            fix = "write one with benchmarks/train_step.py --profile --trace-dir DIR"
            raise SystemExit(f"{path}: {e}; {fix}") from None
        counted = sum(ms for _, ms, _ in r["gaps"])
        print(f"\n{path.name}: GPU busy {r['busy_ms']:.1f} ms of {r['span_ms']:.1f} ms, idle {r['idle_ms']:.1f} ms "
              f"({counted:.1f} ms in gaps >= {args.min_us:g} us)")
        lead = r["host_lead_ms"]
        if lead:
            print(f"  host lead (GPU start - launch of each kernel): min {lead['min']:.2f}, "
                  f"median {lead['median']:.2f}, max {lead['max']:.2f}, last {lead['last']:.2f} ms")
        print(f"  {'idle ms':>8} {'gaps':>6}  host ranges open when the GPU ran dry (outermost > innermost)")
        for key, ms, n in r["gaps"][: args.top]:
            print(f"  {ms:>8.2f} {n:>6}  {key[:160]}")
        if r["blocking"]:
            print(f"  {'host ms':>8} {'calls':>6}  blocking calls")
            for key, ms, n in r["blocking"][: args.top]:
                print(f"  {ms:>8.2f} {n:>6}  {key[:160]}")


if __name__ == "__main__":
    main()
