"""Data-parallel scaling on one host: golf's tokens/s on 1, 2, 4, ... GPUs in one run (issue: distributed training).

    python benchmarks/scaling.py --configs baseline_sp1024 hybrid_sp8192 --devices 1 2 4 \
        --data-sp1024 data/large_sp1024 --data-sp8192 data/large_sp8192 --steps 8

Each (config, N) is `benchmarks/train_step.py --rows golf --devices N`: the Lightning run as users run it, DDP over
N GPUs, the config's global batch unchanged (grad accumulation 8 / N per rank), timed after the compile warm-up.
Runs that fit side by side on disjoint GPUs (4 GPUs: four 1-GPU runs, two 2-GPU runs) run at the same time, each on
its own GPUs and its own rendezvous port. Scaling efficiency(N) = tokens/s(N) / (N x tokens/s(1)).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from provenance import code_commit  # benchmarks/provenance.py, beside this script

HERE = Path(__file__).resolve().parent


def run_group(jobs: list[tuple[str, int]], gpu_count: int, args, workdir: Path) -> list[dict]:
    """Run (config, devices) jobs on disjoint GPU groups, as many at once as fit."""
    rows, pending = [], list(jobs)
    while pending:
        running, free = [], list(range(gpu_count))
        while pending and len(free) >= pending[0][1]:
            config, n = pending.pop(0)
            gpus, free = free[:n], free[n:]
            out = workdir / f"{Path(config).stem}_{n}gpu.json"
            cmd = [sys.executable, str(HERE / "train_step.py"), "--configs", config, "--rows", "golf",
                   "--devices", str(n), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--data-sp1024", args.data_sp1024, "--data-sp8192", args.data_sp8192, "--out", str(out)]
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)), MASTER_PORT=str(29500 + gpus[0]))
            log = open(out.with_suffix(".log"), "w")
            running.append((config, n, out, log, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)))
        for config, n, out, log, proc in running:
            proc.wait()
            log.close()
            if out.is_file():
                rows += json.loads(out.read_text())["rows"]
            else:
                tail = out.with_suffix(".log").read_text().strip().splitlines()[-1:] or [""]
                rows.append(dict(config=config, devices=n, error=f"exit {proc.returncode}: {tail[0][:300]}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["baseline_sp1024", "hybrid_sp8192"])
    ap.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--data-sp1024", default="data/large_sp1024")
    ap.add_argument("--data-sp8192", default="data/large_sp8192")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--logs", type=Path, help="keep the per-run JSON and logs here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scaling.json")
    args = ap.parse_args()
    gpu_count = torch.cuda.device_count()
    if not gpu_count or max(args.devices) > gpu_count:
        raise SystemExit(f"scaling needs {max(args.devices)} GPUs; this host has {gpu_count}")
    workdir = args.logs or Path(tempfile.mkdtemp(prefix="golf-scaling-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sorted(args.devices):
        rows += run_group([(c, n) for c in args.configs], gpu_count, args, workdir)
    one = {r["config"]: r for r in rows if r.get("devices") == 1 and "tokens_per_s" in r}
    for r in rows:
        if "tokens_per_s" in r and r["config"] in one:
            r["scaling_efficiency"] = r["tokens_per_s"] / (r["devices"] * one[r["config"]]["tokens_per_s"])
    print(f"\n{'config':<18}{'GPUs':>5}{'ms/step':>9}{'tok/s':>13}{'tok/s/GPU':>12}{'eff.':>7}{'compile s':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<18}{r.get('devices', '?'):>5}  ERROR {r['error']}")
            continue
        print(f"{r['config']:<18}{r['devices']:>5}{r['ms_per_step']:>9.1f}{r['tokens_per_s']:>13,.0f}"
              f"{r['tokens_per_s_per_gpu']:>12,.0f}{r.get('scaling_efficiency', float('nan')):>7.1%}"
              f"{r['compile_warmup_s']:>10.1f}")
    out = dict(device=torch.cuda.get_device_name(), gpus=gpu_count, torch=torch.__version__,
               date=datetime.now(timezone.utc).isoformat(),
               commit=code_commit(),
               steps=args.steps, warmup=args.warmup, rows=rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
