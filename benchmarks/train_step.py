"""Training-step throughput on one GPU, all rows in one run on the same shards (issue: training throughput).

    python benchmarks/train_step.py --configs baseline_sp1024 hybrid_sp1024 hybrid_sp8192 \
        --data-sp1024 data/large_sp1024 --data-sp8192 data/large_sp8192 --peers .peers --steps 12 --gpus 0 1 2

A config is a name under configs/ or a .yaml path, optionally with LightningCLI overrides after '@' (comma-separated):
`hybrid_sp8192@model.compile_regions=true` times the same config with regional compilation (golf and bare rows).

With --gpus, each config runs in its own process on its own GPU of the host, concurrently; the rows of one config
(golf, bare, peer) always share one GPU and run one after the other, so each comparison is on the same card.
--devices N runs only the golf row under DDP on N GPUs (benchmarks/scaling.py drives this); --profile [TOP] adds a
torch.profiler summary of one step after the timed ones, for every row (its TOP GPU kernels, 25 unless given, their
share of GPU time, the time per kernel family, and the step's wall time: kernel time / wall time is how busy the GPU
was; the peers through benchmarks/profile_script.py, which runs them unchanged); --cold-compile empties the Inductor
and Triton caches for each config, so its first row (golf) reports a cold compile.

Rows per config, at the config's global batch (524,288 tokens at seq 1024 for the baseline, 1,048,576 at seq 4096
for the hybrids) on one GPU, grad accumulation 8 as in the challenge:
  golf        the Lightning run as users run it (`Trainer.fit`, LightningCLI-parsed config, WallClockBudget's
              per-step all-reduce, compile warm-up with state restore),
  bare        the same GolfLM model, optimizer and compiled loss in a plain PyTorch loop (Lightning overhead = the
              difference),
  peer        the challenge's `train_gpt.py` (baseline) or the best SSM entry's `train_mamba3_hybrid.py`
              (hybrids), unchanged, passed by path from --peers, on the same shards; step time read from its log.
Columns: ms/step (median-free: total time of the timed steps / steps, after warm-up, CUDA-synchronised at both
ends), tokens/s, MFU, peak memory, compile+warm-up seconds (process start of the row -> first timed step). The note
gives the golf row's Lightning overhead (against bare), its speed-up against the peer, and its tokens/s over the
--reference config's golf row (default baseline_sp1024: the hybrid-vs-baseline target) when those rows ran too.

MFU counts model FLOPs per token as 6 x (matmul parameters, the tied head included, embedding lookups excluded)
+ attention 6 * T * d_attn per attention layer (causal QK^T and AV, fwd+bwd) + the SSM scan 3 x H x (Q (N + P) + 4 N P)
per SSM layer (chunk-local QK^T/AV halved by causality, state update and state read-out), against the GPU's dense
bf16 peak (989 TFLOP/s for H100 SXM, 989 for H200).
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from provenance import code_commit  # benchmarks/provenance.py, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def peak_flops() -> float:
    name = device_name()
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


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_mem_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None


def build(config: str, data_dir: str, extra: list[str]):
    from lightning.pytorch.cli import LightningCLI

    from golf.data.datamodule import GolfData
    from golf.model import GolfLM

    class Parse(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.link_arguments("data.vocab_size", "model.vocab_size")
            parser.link_arguments("data.seq_len", "model.seq_len")

    name, _, overrides = config.partition("@")
    path = Path(name) if name.endswith(".yaml") else REPO / "configs" / f"{name}.yaml"
    args = ["--config", str(path), f"--data.data_dir={data_dir}", *extra,
            *(f"--{kv}" for kv in overrides.split(",") if kv)]
    return Parse(GolfLM, GolfData, run=False, args=args, save_config_callback=None)


class StepTimer:
    """Times steps warmup..warmup+steps with a CUDA sync at both ends only."""

    def __init__(self, warmup: int, t_start: float) -> None:
        self.warmup, self.t_start = warmup, t_start
        self.t0 = self.t1 = None
        self.n = 0

    def step_done(self, step: int) -> None:
        if step == self.warmup:
            sync()
            self.t0 = time.perf_counter()
            self.compile_s = self.t0 - self.t_start
        elif step > self.warmup:
            self.n += 1

    def finish(self) -> float:
        sync()
        self.t1 = time.perf_counter()
        return (self.t1 - self.t0) / max(self.n, 1)


def row_golf(config: str, data_dir: str, steps: int, warmup: int, devices: int = 1, profile: int = 0,
             trace: Path | None = None) -> dict:
    from lightning.pytorch.callbacks import Callback

    from profiling import StepProfile  # benchmarks/profiling.py, beside this script

    t_start = time.perf_counter()
    timer = StepTimer(warmup, t_start)
    last = warmup + steps
    profiled_step = 1 if profile else 0
    profiled = {}

    class Timing(Callback):
        """Times steps warmup..last; with ``profile`` (> 0: the kernels listed), one more step under torch.profiler,
        from the end of the last timed step's hooks to the end of the next one's (Lightning's between-step work
        included, as users pay it)."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            timer.step_done(trainer.global_step)
            if trainer.global_step == last:
                timer.ms = timer.finish() * 1e3
                if profile:
                    self.window = StepProfile(profile, trace).start()
            elif trainer.global_step == last + 1 and profile:
                profiled["profile"] = self.window.finish()

    cli = build(config, data_dir, ["--model.compile_warmup_steps=2", f"--trainer.max_steps={last + profiled_step}",
                                   "--trainer.val_check_interval=100000", "--trainer.logger=false",
                                   "--trainer.enable_checkpointing=false",
                                   *([f"--trainer.devices={devices}", "--trainer.strategy=ddp"] if devices > 1 else [])])
    trainer = cli.trainer
    # Keep the budget clock (per step; an all-reduce with several ranks: part of what users pay); drop finalization.
    from golf.callbacks import Finalize

    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, Finalize)] + [Timing()]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(cli.model, cli.datamodule)
    return dict(ms_per_step=timer.ms, compile_warmup_s=timer.compile_s, peak_mem_gb=peak_mem_gb(), devices=devices,
                rank=trainer.global_rank, model=cli.model, tokens_per_step=cli.datamodule.train_batch_tokens,
                seq_len=cli.datamodule.seq_len, **profiled)


def row_bare(config: str, data_dir: str, steps: int, warmup: int, profile: int = 0,
             trace: Path | None = None) -> dict:
    """The same model, optimizer, compiled loss and batches, in a plain loop."""
    from golf.data.datamodule import TrainWindows

    t_start = time.perf_counter()
    cli = build(config, data_dir, [])
    lm, dm = cli.model, cli.datamodule
    dm.setup("fit")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lm.to(device)
    opt = lm.configure_optimizers()
    lm.configure_model()  # the golf run's compiled loss (whole model or regions, as the config says)
    loss_fn = lm._train_loss
    autocast = "bf16" in str(cli.trainer.precision)  # as the golf row's precision plugin does
    windows = TrainWindows(dm.load_train(), dm.layout(1), rank=0, pin_memory=device.type == "cuda")
    timer = StepTimer(warmup, t_start)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def train_step(step: int) -> None:
        batch = windows.batch(step)
        batch = batch.to(device, non_blocking=True)
        for micro in batch:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(micro[:, :-1], micro[:, 1:])
            (loss / batch.size(0)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for step in range(1, warmup + steps + 1):
        train_step(step)
        timer.step_done(step)
    ms = timer.finish() * 1e3
    row = dict(ms_per_step=ms, compile_warmup_s=timer.compile_s, peak_mem_gb=peak_mem_gb(), model=lm,
               tokens_per_step=dm.train_batch_tokens, seq_len=dm.seq_len)
    if profile:
        from profiling import profile_step  # benchmarks/profiling.py, beside this script

        row["profile"] = profile_step(lambda: train_step(warmup + steps + 1), top=profile, trace=trace)
    return row


def row_peer(config: str, data_dir: str, peers: Path, steps: int, warmup: int, vocab: int, log_dir: Path,
             peer_timeout: float = 900, profile: int = 0) -> dict:
    """The peer script, unchanged; with ``profile`` it runs one step more under benchmarks/profile_script.py, which
    profiles that step the way the golf rows' profile is taken (the timed steps are the same)."""
    peers = peers.resolve()  # the script runs with the peers folder as its working directory
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    last = warmup + steps
    settings = dict(ITERATIONS=str(last + (1 if profile else 0)), WARMUP_STEPS="3", VAL_LOSS_EVERY="0",
                    TRAIN_LOG_EVERY="1", MAX_WALLCLOCK_SECONDS="0", VOCAB_SIZE=str(vocab))
    import_paths = []  # put before PYTHONPATH
    if config.startswith("baseline"):
        script = peers / "train_gpt.py"
    else:
        script = peers / "train_mamba3_hybrid.py"
        settings.update(NUM_LAYERS="7", NUM_ATTN_LAYERS="2", USE_BIGRAM_HASH="0", TRAIN_SEQ_LEN="4096",
                        TRAIN_BATCH_TOKENS="1048576", SWEEP_MODE="1", TTT_ENABLED="0")
        import_paths = [str(peers / "mamba_src"), str(peers / "stubs")]
    if not script.is_file():
        return dict(error=f"{script} not found (place the challenge's script there)")
    env = dict(os.environ, **settings, DATA_PATH=str(Path(data_dir).resolve()), RUN_ID=f"peer_{config}",
               TOKENIZER_PATH=str((Path(data_dir) / manifest["tokenizer"]).resolve()))
    if import_paths:
        env["PYTHONPATH"] = os.pathsep.join([*import_paths, env.get("PYTHONPATH", "")])
    # Which script ran, so that "unchanged" can be checked against the challenge's repository, and how it was set.
    provenance = dict(script=script.name, script_sha256=hashlib.sha256(script.read_bytes()).hexdigest(),
                      settings=settings)
    t0 = time.perf_counter()
    log_path = log_dir / f"peer_{Path(config).stem}.log"
    profile_path = log_dir / f"peer_{Path(config).stem}.profile.json"
    profile_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(script)]
    if profile:
        profiler = Path(__file__).with_name("profile_script.py")
        cmd[1:1] = [str(profiler), "--step", str(last + 1), "--top", str(profile), "--out", str(profile_path)]
    with open(log_path, "w") as log_file:  # on disk as it runs: a timed-out peer still leaves its step times
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                cwd=str(peers), start_new_session=True)
        try:
            returncode = proc.wait(timeout=peer_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = "timeout"
    log = log_path.read_text()
    # step:N/M ... train_time:XXms after the script's own (restored) warm-up; the mean over steps warmup+1..last.
    times = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(r"step:(\d+)/\d+ .*?train_time:([\d.]+)ms", log)]
    t_by_step = {step: t for step, t in times if step <= last}  # not the profiled step
    if not t_by_step or max(t_by_step) <= warmup or warmup not in t_by_step:
        return dict(error=f"exit {returncode}: {log.strip().splitlines()[-1][:300] if log.strip() else ''}",
                    **provenance)
    timed_last = max(t_by_step)
    ms = (t_by_step[timed_last] - t_by_step[warmup]) / (timed_last - warmup)
    mem = re.search(r"peak memory allocated: (\d+) MiB", log)
    row = dict(ms_per_step=ms, peak_mem_gb=int(mem.group(1)) * 2**20 / 1e9 if mem else None,
               wall_s=time.perf_counter() - t0, exit=returncode, **provenance)
    if profile_path.is_file():
        row["profile"] = json.loads(profile_path.read_text())
    return row


def run_rows(args) -> list[dict]:
    peak = peak_flops()
    rows = []
    for config in args.configs:
        vocab = 8192 if "8192" in config else 1024
        data_dir = args.data_sp8192 if vocab == 8192 else args.data_sp1024
        fpt = None
        if args.cold_compile:  # empty Inductor and Triton caches: the config's first row pays a cold compile
            for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
                os.environ[var] = tempfile.mkdtemp(prefix=f"golf_{var.split('_')[0].lower()}_")
                atexit.register(shutil.rmtree, os.environ[var], ignore_errors=True)
            torch._dynamo.reset()  # (a local `import torch._dynamo` here made `torch` local to the whole function)
        for kind in args.rows:
            t0 = time.perf_counter()
            trace = args.trace_dir / f"trace_{Path(config).stem}_{kind}.json" if args.trace_dir else None
            try:
                if kind == "golf":
                    r = row_golf(config, data_dir, args.steps, args.warmup, args.devices, args.profile, trace)
                elif kind == "bare":
                    r = row_bare(config, data_dir, args.steps, args.warmup, args.profile, trace)
                elif "@" in config:  # a variant of a config: its peer row is the plain config's
                    continue
                else:
                    r = row_peer(config, data_dir, args.peers, args.steps, args.warmup, vocab, args.out.parent,
                                 args.peer_timeout, args.profile)
            except Exception as e:  # a failed row is reported, the others still run
                r = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            model = r.pop("model", None)
            if model is not None and fpt is None:
                fpt = flops_per_token(model.model, r["seq_len"])
                tokens_per_step = r["tokens_per_step"]
            r.pop("seq_len", None)
            r.pop("tokens_per_step", None)
            row = dict(config=config, row=kind, device=device_name(), row_seconds=time.perf_counter() - t0, **r)
            if "ms_per_step" in r and fpt:
                tps = tokens_per_step / (r["ms_per_step"] / 1e3)
                row.update(tokens_per_s=tps, tokens_per_s_per_gpu=tps / r.get("devices", 1),
                           mfu=tps * fpt / (peak * r.get("devices", 1)), flops_per_token=fpt)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def run_concurrently(args) -> list[dict]:
    """One process per config, each on its own GPU (CUDA_VISIBLE_DEVICES), all at once; their rows merged."""
    if len(args.gpus) < len(args.configs):
        raise SystemExit(f"--gpus names {len(args.gpus)} GPUs for {len(args.configs)} configs: give one per config")
    procs = []
    for config, gpu in zip(args.configs, args.gpus):
        out = args.out.with_name(f"{args.out.stem}.{re.sub(r'[^A-Za-z0-9_]+', '_', Path(config).stem)}.json")
        cmd = [sys.executable, __file__, "--configs", config, "--rows", *args.rows, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--data-sp1024", args.data_sp1024, "--data-sp8192", args.data_sp8192,
               "--peers", str(args.peers), "--peer-timeout", str(args.peer_timeout), "--out", str(out),
               *(["--profile", str(args.profile)] if args.profile else []),
               *(["--cold-compile"] if args.cold_compile else []),
               *(["--trace-dir", str(args.trace_dir)] if args.trace_dir else [])]
        log = open(out.with_suffix(".log"), "w")
        procs.append((out, log, subprocess.Popen(cmd, env=dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu)),
                                                  stdout=log, stderr=subprocess.STDOUT)))
    rows = []
    for out, log, proc in procs:
        proc.wait()
        log.close()
        if out.is_file():
            rows += json.loads(out.read_text())["rows"]
        else:
            rows.append(dict(config=out.stem, row="all", error=f"exit {proc.returncode}, see {out.with_suffix('.log')}"))
    return rows


def compare(rows: list[dict], configs: list[str], reference: str | None = None) -> None:
    """Adds to each golf row its Lightning overhead against the bare row, its speed-up against the peer and, for the
    golf rows of the other configs, its tokens/s over the ``reference`` config's golf row (the hybrid-vs-baseline
    target), when those rows ran in this run."""
    by = {(r["config"], r["row"]): r for r in rows}
    ref = by.get((reference, "golf"), {})
    for config in configs:
        g, b = by.get((config, "golf"), {}), by.get((config, "bare"), {})
        if "ms_per_step" in g and "ms_per_step" in b:
            g["lightning_overhead_pct"] = 100 * (g["ms_per_step"] / b["ms_per_step"] - 1)
        p = by.get((config, "peer"), {})
        if "ms_per_step" in g and "ms_per_step" in p:
            g["speedup_vs_peer"] = p["ms_per_step"] / g["ms_per_step"]
        if config != reference and g.get("tokens_per_s") and ref.get("tokens_per_s"):
            g["tokens_per_s_vs_reference"] = {"config": reference, "ratio": g["tokens_per_s"] / ref["tokens_per_s"]}


def print_table(rows: list[dict]) -> None:
    w = max([16] + [len(r["config"]) + 2 for r in rows])
    print(f"\n{'config':<{w}}{'row':<6}{'ms/step':>9}{'tok/s':>12}{'MFU':>7}{'peak GB':>9}{'compile s':>10}  note")
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<{w}}{r['row']:<6}  ERROR {r['error']}")
            continue
        note = ""
        if "lightning_overhead_pct" in r:
            note += f"Lightning overhead {r['lightning_overhead_pct']:+.1f}% "
        if "speedup_vs_peer" in r:
            note += f"{r['speedup_vs_peer']:.2f}x peer "
        if "tokens_per_s_vs_reference" in r:
            ref = r["tokens_per_s_vs_reference"]
            note += f"{ref['ratio']:.3f}x {ref['config']}'s tokens/s"
        print(f"{r['config']:<{w}}{r['row']:<6}{r['ms_per_step']:>9.1f}{r.get('tokens_per_s', 0):>12,.0f}"
              f"{r.get('mfu', float('nan')):>7.1%}{(r.get('peak_mem_gb') or float('nan')):>9.1f}"
              f"{(r.get('compile_warmup_s') or float('nan')):>10.1f}  {note}")
    for r in rows:
        if "profile" in r:
            prof = r["profile"]
            print(f"\nprofile, one {r['row']} step of {r['config']}: {prof['total_ms']:.1f} ms of {prof['clock']} in "
                  f"{prof['wall_ms']:.1f} ms of wall time")
            print("  by family: " + ", ".join(f"{f} {v['ms']:.1f} ms ({v['share']:.0%})"
                                              for f, v in prof.get("families", {}).items()))
            for k in prof["top"]:
                print(f"  {k['share']:>6.1%} {k['ms']:>9.2f} ms {k['calls']:>5}x  {k['name']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["baseline_sp1024", "hybrid_sp1024", "hybrid_sp8192"],
                    help="names under configs/ or paths to .yaml files")
    ap.add_argument("--rows", nargs="+", default=["golf", "bare", "peer"], choices=["golf", "bare", "peer"])
    ap.add_argument("--data-sp1024", default="data/large_sp1024")
    ap.add_argument("--data-sp8192", default="data/large_sp8192")
    ap.add_argument("--peers", type=Path, default=REPO / ".peers")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--peer-timeout", type=float, default=900, help="seconds before a peer script is stopped "
                    "(its step times so far are still read)")
    ap.add_argument("--gpus", nargs="+", type=int, help="run the configs concurrently, one per listed GPU")
    ap.add_argument("--devices", type=int, default=1, help="golf row under DDP on this many GPUs")
    ap.add_argument("--profile", type=int, nargs="?", const=25, default=0, metavar="TOP",
                    help="torch.profiler summary of one step of each row, listing its TOP kernels (default 25)")
    ap.add_argument("--trace-dir", type=Path, help="with --profile, also write each golf/bare row's profiled step as a "
                    "Chrome trace there (read by benchmarks/gpu_gaps.py)")
    ap.add_argument("--cold-compile", action="store_true", help="empty Inductor/Triton caches for each config, so "
                    "its first row's compile column is a cold start (later rows of the config reuse that cache)")
    ap.add_argument("--reference", default="baseline_sp1024", help="the config whose golf tokens/s the other golf "
                    "rows are divided by in the note and the JSON (the hybrid-vs-baseline target), when it ran too")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_step.json")
    args = ap.parse_args()
    if args.devices > 1 and args.rows != ["golf"]:
        raise SystemExit("--devices > 1 times the golf row only: pass --rows golf")
    if args.profile < 0:
        raise SystemExit(f"--profile {args.profile}: give the number of kernels to list (1 or more), or leave it out")
    if args.trace_dir and not args.profile:
        raise SystemExit("--trace-dir writes the profiled step's trace: pass --profile too")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.trace_dir:
        args.trace_dir.mkdir(parents=True, exist_ok=True)
    rows = run_concurrently(args) if args.gpus else run_rows(args)
    if int(os.environ.get("LOCAL_RANK", "0")) != 0 or any(r.get("rank", 0) != 0 for r in rows):
        return  # a DDP child of the golf row: rank 0 reports
    compare(rows, args.configs, args.reference)
    print_table(rows)
    out = dict(device=device_name(), torch=torch.__version__, date=datetime.now(timezone.utc).isoformat(),
               commit=code_commit(),
               steps=args.steps, warmup=args.warmup, concurrent_gpus=args.gpus, rows=rows)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
