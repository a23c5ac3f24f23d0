"""Training-step throughput on one GPU, all rows in one run on the same shards (issue: training throughput).

    python benchmarks/train_step.py --configs baseline_sp1024 hybrid_sp1024 hybrid_sp8192 \
        --data-sp1024 data/large_sp1024 --data-sp8192 data/large_sp8192 --peers .peers --steps 12

Rows per config, at the config's global batch (524,288 tokens at seq 1024 for the baseline, 1,048,576 at seq 4096
for the hybrids) on one GPU, grad accumulation 8 as in the challenge:
  golf        the Lightning run as users run it (`Trainer.fit`, LightningCLI-parsed config, WallClockBudget's
              per-step all-reduce, compile warm-up with state restore),
  bare        the same GolfLM model, optimizer and compiled loss in a plain PyTorch loop (Lightning overhead = the
              difference),
  peer        the challenge's `train_gpt.py` (baseline) or the best SSM entry's `train_mamba3_hybrid.py`
              (hybrids), unchanged, passed by path from --peers, on the same shards; step time read from its log.
Columns: ms/step (median-free: total time of the timed steps / steps, after warm-up, CUDA-synchronised at both
ends), tokens/s, MFU, peak memory, compile+warm-up seconds (process start of the row -> first timed step).

MFU counts model FLOPs per token as 6 x (matmul parameters, the tied head included, embedding lookups excluded)
+ attention 6 * T * d_attn per attention layer (causal QK^T and AV, fwd+bwd) + the SSM scan 3 x H x (Q (N + P) + 4 N P)
per SSM layer (chunk-local QK^T/AV halved by causality, state update and state read-out), against the GPU's dense
bf16 peak (989 TFLOP/s for H100 SXM, 989 for H200).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))


def flops_per_token(model, seq_len: int) -> float:
    from golf.modules.attention import CausalSelfAttention
    from golf.modules.layers import CastedLinear
    from golf.modules.mamba3 import Mamba3Mixer

    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, CastedLinear))
    matmul += model.tok_emb.weight.numel()  # tied head
    flops = 6.0 * matmul
    for m in model.modules():
        if isinstance(m, CastedLinear):
            continue
        if isinstance(m, CausalSelfAttention):
            flops += 6.0 * seq_len * m.num_heads * m.head_dim
        elif isinstance(m, Mamba3Mixer):
            Q, N, P = m.chunk_size, m.d_state, m.headdim
            flops += 3.0 * m.nheads * (Q * (N + P) + 4 * N * P)
    return flops


def build(config: str, data_dir: str, extra: list[str]):
    from lightning.pytorch.cli import LightningCLI

    from golf.data.datamodule import GolfData
    from golf.model import GolfLM

    class Parse(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.link_arguments("data.vocab_size", "model.vocab_size")
            parser.link_arguments("data.seq_len", "model.seq_len")

    args = ["--config", str(REPO / "configs" / f"{config}.yaml"), f"--data.data_dir={data_dir}", *extra]
    return Parse(GolfLM, GolfData, run=False, args=args, save_config_callback=None)


class StepTimer:
    """Times steps warmup..warmup+steps with a CUDA sync at both ends only."""

    def __init__(self, warmup: int, t_start: float) -> None:
        self.warmup, self.t_start = warmup, t_start
        self.t0 = self.t1 = None
        self.n = 0

    def step_done(self, step: int) -> None:
        if step == self.warmup:
            torch.cuda.synchronize()
            self.t0 = time.perf_counter()
            self.compile_s = self.t0 - self.t_start
        elif step > self.warmup:
            self.n += 1

    def finish(self) -> float:
        torch.cuda.synchronize()
        self.t1 = time.perf_counter()
        return (self.t1 - self.t0) / max(self.n, 1)


def row_golf(config: str, data_dir: str, steps: int, warmup: int) -> dict:
    from lightning.pytorch.callbacks import Callback

    t_start = time.perf_counter()
    timer = StepTimer(warmup, t_start)

    class Timing(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            timer.step_done(trainer.global_step)
            if trainer.global_step == warmup + steps:
                timer.ms = timer.finish() * 1e3

    cli = build(config, data_dir, ["--model.compile_warmup_steps=2", f"--trainer.max_steps={warmup + steps}",
                                   "--trainer.val_check_interval=100000", "--trainer.logger=false",
                                   "--trainer.enable_checkpointing=false"])
    trainer = cli.trainer
    # Keep the budget clock (its per-step all-reduce is part of what users pay); drop finalization for timing.
    from golf.callbacks import Finalize

    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, Finalize)] + [Timing()]
    torch.cuda.reset_peak_memory_stats()
    trainer.fit(cli.model, cli.datamodule)
    ms = timer.ms
    return dict(ms_per_step=ms, compile_warmup_s=timer.compile_s, peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9,
                model=cli.model, tokens_per_step=cli.datamodule.train_batch_tokens, seq_len=cli.datamodule.seq_len)


def row_bare(config: str, data_dir: str, steps: int, warmup: int) -> dict:
    """The same model, optimizer, compiled loss and batches, in a plain loop."""
    from golf.data.datamodule import TrainWindows

    t_start = time.perf_counter()
    cli = build(config, data_dir, [])
    lm, dm = cli.model, cli.datamodule
    dm.setup("fit")
    device = torch.device("cuda")
    lm.to(device)
    model = lm.model
    opt = lm.configure_optimizers()
    loss_fn = torch.compile(model.loss, fullgraph=True, dynamic=False)
    windows = TrainWindows(dm.load_train(), dm.layout(1), rank=0)
    timer = StepTimer(warmup, t_start)
    torch.cuda.reset_peak_memory_stats()
    for step in range(1, warmup + steps + 1):
        batch = windows.batch(step).pin_memory().to(device, non_blocking=True)
        for micro in batch:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(micro[:, :-1], micro[:, 1:])
            (loss / batch.size(0)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        timer.step_done(step)
    ms = timer.finish() * 1e3
    return dict(ms_per_step=ms, compile_warmup_s=timer.compile_s, peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9,
                model=lm, tokens_per_step=dm.train_batch_tokens, seq_len=dm.seq_len)


def row_peer(config: str, data_dir: str, peers: Path, steps: int, warmup: int, vocab: int) -> dict:
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    env = dict(os.environ, DATA_PATH=str(Path(data_dir).resolve()), VOCAB_SIZE=str(vocab),
               TOKENIZER_PATH=str((Path(data_dir) / manifest["tokenizer"]).resolve()),
               ITERATIONS=str(warmup + steps), WARMUP_STEPS="3", VAL_LOSS_EVERY="0", TRAIN_LOG_EVERY="1",
               MAX_WALLCLOCK_SECONDS="0", RUN_ID=f"peer_{config}")
    if config.startswith("baseline"):
        script = peers / "train_gpt.py"
    else:
        script = peers / "train_mamba3_hybrid.py"
        env.update(NUM_LAYERS="7", NUM_ATTN_LAYERS="2", USE_BIGRAM_HASH="0", TRAIN_SEQ_LEN="4096",
                   TRAIN_BATCH_TOKENS="1048576", SWEEP_MODE="1", TTT_ENABLED="0",
                   PYTHONPATH=os.pathsep.join([str(peers / "mamba_src"), str(peers / "stubs"), env.get("PYTHONPATH", "")]))
    if not script.is_file():
        return dict(error=f"{script} not found (place the challenge's script there)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900,
                          cwd=str(peers))
    log = proc.stdout + proc.stderr
    (Path(os.environ.get("OUT", ".")) / f"peer_{config}.log").write_text(log)
    # step:N/M ... step_avg:XXms, after the script's own warm-up; use the average over steps > warmup.
    times = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(r"step:(\d+)/\d+ .*?train_time:([\d.]+)ms", log)]
    if proc.returncode != 0 and not times:
        return dict(error=f"exit {proc.returncode}: {log.strip().splitlines()[-1][:300] if log.strip() else ''}")
    t_by_step = dict(times)
    last = max(t_by_step)
    ms = (t_by_step[last] - t_by_step[warmup]) / (last - warmup)
    mem = re.search(r"peak memory allocated: (\d+) MiB", log)
    return dict(ms_per_step=ms, peak_mem_gb=int(mem.group(1)) * 2**20 / 1e9 if mem else None,
                wall_s=time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["baseline_sp1024", "hybrid_sp1024", "hybrid_sp8192"])
    ap.add_argument("--rows", nargs="+", default=["golf", "bare", "peer"])
    ap.add_argument("--data-sp1024", default="data/large_sp1024")
    ap.add_argument("--data-sp8192", default="data/large_sp8192")
    ap.add_argument("--peers", type=Path, default=REPO / ".peers")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_step.json")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak = peak_flops()
    rows = []
    for config in args.configs:
        vocab = 8192 if "8192" in config else 1024
        data_dir = args.data_sp8192 if vocab == 8192 else args.data_sp1024
        fpt = None
        for kind in args.rows:
            t0 = time.perf_counter()
            try:
                if kind == "golf":
                    r = row_golf(config, data_dir, args.steps, args.warmup)
                elif kind == "bare":
                    r = row_bare(config, data_dir, args.steps, args.warmup)
                else:
                    r = row_peer(config, data_dir, args.peers, args.steps, args.warmup, vocab)
            except Exception as e:  # a failed row is reported, the others still run
                r = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            model = r.pop("model", None)
            if model is not None and fpt is None:
                fpt = flops_per_token(model.model, r["seq_len"])
                tokens_per_step = r["tokens_per_step"]
            r.pop("seq_len", None)
            r.pop("tokens_per_step", None)
            row = dict(config=config, row=kind, row_seconds=time.perf_counter() - t0, **r)
            if "ms_per_step" in r and fpt:
                tps = tokens_per_step / (r["ms_per_step"] / 1e3)
                row.update(tokens_per_s=tps, mfu=tps * fpt / peak, flops_per_token=fpt)
            rows.append(row)
            print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()
    by = {(r["config"], r["row"]): r for r in rows}
    for config in args.configs:
        g, b = by.get((config, "golf"), {}), by.get((config, "bare"), {})
        if "ms_per_step" in g and "ms_per_step" in b:
            g["lightning_overhead_pct"] = 100 * (g["ms_per_step"] / b["ms_per_step"] - 1)
        p = by.get((config, "peer"), {})
        if "ms_per_step" in g and "ms_per_step" in p:
            g["speedup_vs_peer"] = p["ms_per_step"] / g["ms_per_step"]
    print(f"\n{'config':<16}{'row':<6}{'ms/step':>9}{'tok/s':>12}{'MFU':>7}{'peak GB':>9}{'compile s':>10}  note")
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<16}{r['row']:<6}  ERROR {r['error']}")
            continue
        note = ""
        if "lightning_overhead_pct" in r:
            note += f"Lightning overhead {r['lightning_overhead_pct']:+.1f}% "
        if "speedup_vs_peer" in r:
            note += f"{r['speedup_vs_peer']:.2f}x peer"
        print(f"{r['config']:<16}{r['row']:<6}{r['ms_per_step']:>9.1f}{r.get('tokens_per_s', 0):>12,.0f}"
              f"{r.get('mfu', float('nan')):>7.1%}{(r.get('peak_mem_gb') or float('nan')):>9.1f}"
              f"{(r.get('compile_warmup_s') or float('nan')):>10.1f}  {note}")
    out = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, date=datetime.now(timezone.utc).isoformat(),
               commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=REPO).stdout.strip() or os.environ.get("GOLF_COMMIT", "unknown"),
               steps=args.steps, warmup=args.warmup, rows=rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / args.out.name).write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
