"""The evaluation modes the challenge accepts (parameter-golf.md §1.3), with optional score-first TTT.

:func:`evaluate` scores the targets ``1 .. usable`` of a val token array (see golf.eval.plan) exactly once each, in one
left-to-right pass per sub-stream, with the full softmax over the vocabulary, and returns the same float64
all-reduced sums as golf.metrics.BitsPerByte. Scoring runs under ``torch.no_grad`` (never ``inference_mode``: its
tensors, e.g. cached RoPE tables, break the autograd of a later TTT step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from golf.data.tokenizer import ByteLUTs
from golf.errors import GolfError
from golf.eval.config import EvalConfig
from golf.eval.plan import (
    Windows,
    doc_chunks,
    doc_isolated_plan,
    doc_segments,
    sliding_plan,
    stream_starts,
    stream_windows,
    train_spans,
    usable_targets,
    windows_plan,
)
from golf.eval.ttt import BatchedLoRA, ChunkTrainer, masked_nll, spans_positions
from golf.evaluate import EvalResult, autocast_for
from golf.kernels.ssm_scan import Mamba3State
from golf.metrics import BitsPerByte
from golf.modules.attention import CausalSelfAttention, KVCache
from golf.modules.layers import Rotary, apply_rotary


# ---------------------------------------------------------------------------------------------------------------
# result and trace
# ---------------------------------------------------------------------------------------------------------------


class Trace:
    """Per-target record of one evaluation (this rank's targets), for the legality tests. Off by default: it holds
    a few arrays of the val length. ``events`` lists ("score" | "update", positions, lineage) in the order they
    happened; ``lineage`` gives, per position, the start of the stream whose model state the event belongs to (0:
    the shared model; a document's BOS position: that document's own LoRA)."""

    def __init__(self, n_tokens: int, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.nll = np.full(n_tokens, np.nan)
        self.prob_sum = np.full(n_tokens, np.nan)
        self.count = np.zeros(n_tokens, dtype=np.int64)
        self.event = np.full(n_tokens, -1, dtype=np.int64)
        self.vocab: set[int] = set()
        self.events: list[tuple[str, np.ndarray, np.ndarray]] = []

    def score(self, pos: np.ndarray, nll: np.ndarray, prob_sum: np.ndarray, lineage: np.ndarray, vocab: int) -> None:
        self.event[pos] = len(self.events)
        self.events.append(("score", pos, lineage))
        np.add.at(self.count, pos, 1)
        self.nll[pos] = nll
        self.prob_sum[pos] = prob_sum
        self.vocab.add(vocab)

    def update(self, pos: np.ndarray, lineage: np.ndarray) -> None:
        self.events.append(("update", pos, lineage))


@dataclass
class ModeResult(EvalResult):
    mode: str = "windows"
    ttt: str = "none"
    ttt_seconds: float = 0.0
    ttt_steps: int = 0
    ttt_chunks: int = 0
    ttt_stopped_early: bool = False
    trace: Trace | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {
            **super().as_dict(),
            "mode": self.mode,
            "ttt": self.ttt,
            "ttt_seconds": self.ttt_seconds,
            "ttt_steps": self.ttt_steps,
            "ttt_chunks": self.ttt_chunks,
            "ttt_stopped_early": self.ttt_stopped_early,
        }


# ---------------------------------------------------------------------------------------------------------------
# batches of windows
# ---------------------------------------------------------------------------------------------------------------


def gather(tokens: np.ndarray, w: Windows, device: torch.device):
    """Right-padded ``[n, T]`` inputs and targets of windows, the mask of scored targets, their positions (row-major)
    and whether every target of the batch is scored (then the batch is a plain ``[n, seq_len]`` block)."""
    n = w.e - w.a
    T = int(n.max())
    j = np.arange(T)
    idx = np.minimum(w.a[:, None] + np.arange(T + 1)[None, :], len(tokens) - 1)
    win = tokens[idx].astype(np.int64)
    valid = j[None, :] < n[:, None]
    scored = valid & (j[None, :] >= (n - w.k)[:, None])
    all_scored = bool(scored.all())
    if all_scored:
        x, y = win[:, :-1], win[:, 1:]
    else:  # right padding (after the real tokens, so a causal model's outputs on them are unchanged)
        x, y = np.where(valid, win[:, :-1], 0), np.where(valid, win[:, 1:], 0)
    pos = (w.a[:, None] + 1 + j[None, :])[scored]
    return (torch.from_numpy(np.ascontiguousarray(x)).to(device), torch.from_numpy(np.ascontiguousarray(y)).to(device),
            torch.from_numpy(scored).to(device), pos, all_scored, scored)


class _Eval:
    """State shared by the loops of one evaluation."""

    def __init__(self, model, tokens, seq_len, luts, device, cfg: EvalConfig, batch_tokens: int, trace: bool):
        self.model, self.tokens, self.L, self.device, self.cfg = model, tokens, seq_len, device, cfg
        self.luts = luts.to(device)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size() if self.distributed else 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.usable = usable_targets(len(tokens), seq_len)
        self.batch_tokens = batch_tokens
        self.batch_seqs = max(1, batch_tokens // (self.world * seq_len))
        self.metric = BitsPerByte(sync_on_compute=self.distributed).to(device)
        self.trace = Trace(len(tokens), 1, self.usable) if trace else None
        self.t0 = time.perf_counter()
        self.ttt_seconds = 0.0
        self.lora_chunks = 0
        self.stopped = False

    def split(self, n: int) -> tuple[int, int]:
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    # -- scoring --------------------------------------------------------------------------------------------------
    def account(self, logits: torch.Tensor, x, y, scored, pos, all_scored, scored_np, lineage=None) -> None:
        V = logits.size(-1)
        lf = logits.float().reshape(-1, V)
        if all_scored:  # the exact arithmetic of golf.evaluate.score_windows
            sel_lf, sel_y = lf, y.reshape(-1)
            loss_sum = F.cross_entropy(lf, sel_y, reduction="sum")
            nbytes = self.luts.target_bytes(x, y).sum()
            count = torch.tensor(y.numel(), device=y.device)
        else:
            m = scored.reshape(-1)
            sel_lf, sel_y = lf[m], y.reshape(-1)[m]
            loss_sum = F.cross_entropy(sel_lf, sel_y, reduction="sum")
            nbytes = self.luts.target_bytes(x, y)[scored].sum()
            count = m.sum()
        self.metric.update(loss_sum, count, nbytes)
        if self.trace is not None:
            logp = F.log_softmax(sel_lf, dim=-1)
            nll = F.cross_entropy(sel_lf, sel_y, reduction="none")
            lin = np.zeros(len(pos), dtype=np.int64) if lineage is None else \
                np.broadcast_to(np.asarray(lineage)[:, None], scored_np.shape)[scored_np]
            self.trace.score(pos, nll.double().cpu().numpy(), logp.double().exp().sum(-1).cpu().numpy(), lin, V)

    def score_windows(self, w: Windows) -> None:
        x, y, scored, pos, all_scored, scored_np = gather(self.tokens, w, self.device)
        with torch.no_grad(), autocast_for(self.device):
            logits = self.model(x)
        self.account(logits, x, y, scored, pos, all_scored, scored_np)

    # -- TTT helpers ----------------------------------------------------------------------------------------------
    def keep_training(self, collective: bool = True) -> bool:
        """False once the time budget is spent (then for good). ``collective``: all ranks agree (max of the flags)."""
        if self.stopped:
            return False
        budget = self.cfg.time_budget_seconds
        flag = budget is not None and time.perf_counter() - self.t0 > budget
        if collective and self.distributed and budget is not None:
            t = torch.tensor([1.0 if flag else 0.0], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item() > 0)
        self.stopped = flag
        return not flag

    def train_spans(self, trainer: ChunkTrainer, a: np.ndarray, e: np.ndarray) -> None:
        """One chunk's TTT steps on global spans ``(a, e)``; this rank takes a contiguous share, the loss is normalised
        by the global number of targets, gradients are summed over ranks inside ``trainer``."""
        t = time.perf_counter()
        total = int((e - a).sum())
        s0, s1 = self.split(len(a))
        my_a, my_e = a[s0:s1], e[s0:s1]
        bs = self.batch_seqs

        def forward_loss() -> None:
            for s in range(0, len(my_a), bs):
                w = Windows(my_a[s : s + bs], my_e[s : s + bs], my_e[s : s + bs] - my_a[s : s + bs], my_a[s : s + bs])
                x, y, mask, *_ = gather(self.tokens, w, self.device)
                with autocast_for(self.device):
                    logits = self.model(x)
                (masked_nll(logits, y, mask).sum() / max(total, 1)).backward()

        with torch.enable_grad():
            trainer.train(trainer.chunks, forward_loss)
        if self.trace is not None:
            pos = spans_positions(my_a, my_e)
            self.trace.update(pos, np.zeros(len(pos), dtype=np.int64))
        self.ttt_seconds += time.perf_counter() - t


# ---------------------------------------------------------------------------------------------------------------
# windows / sliding / doc_isolated
# ---------------------------------------------------------------------------------------------------------------


def _run_plan(ev: _Eval, plan: Windows, cuts: np.ndarray | None) -> ChunkTrainer | None:
    """Score the plan's windows in order, this rank a contiguous share of each chunk; with kind=chunk, train on each
    chunk (its targets cut into seq_len spans, split at ``cuts``) after all its windows are scored. A window belongs
    to the chunk of its first scored target, so every target of a chunk is scored before the chunk is trained on."""
    cfg = ev.cfg.ttt
    if cfg.kind == "chunk":
        ct = cfg.chunk_tokens
        n_chunks = -(-ev.usable // ct)
        bounds = np.searchsorted((plan.score_from - 1) // ct, np.arange(n_chunks + 1), side="left")
        bounds[-1] = len(plan)
        trainer = ChunkTrainer(ev.model, cfg, n_chunks - 1)
    else:
        n_chunks, bounds, trainer = 1, np.array([0, len(plan)]), None
    try:
        for c in range(n_chunks):
            i0, i1 = int(bounds[c]), int(bounds[c + 1])
            s0, s1 = (i0 + v for v in ev.split(i1 - i0))
            for s in range(s0, s1, ev.batch_seqs):
                ev.score_windows(plan.take(slice(s, min(s + ev.batch_seqs, s1))))
            if trainer is not None and c < n_chunks - 1 and cfg.epochs > 0 and ev.keep_training():
                a, e = train_spans(c * ct + 1, min((c + 1) * ct, ev.usable), ev.L, cuts)
                ev.train_spans(trainer, a, e)
    finally:
        if trainer is not None:
            trainer.restore()
    return trainer


# ---------------------------------------------------------------------------------------------------------------
# stateful
# ---------------------------------------------------------------------------------------------------------------


def truncate_kv(k: torch.Tensor, v: torch.Tensor, keep: int, rotary: Rotary):
    """Keep the last ``keep`` positions of a post-RoPE ``[B, H, T, D]`` KV cache and rotate the kept keys back by the
    number of dropped positions, so that they sit at positions 0..keep-1 and the next window's queries (placed after
    the cache by the attention layer) see the true relative distances."""
    if keep <= 0:
        return None
    T = k.size(2)
    if T <= keep:
        return k, v
    shift = T - keep
    cos, sin = rotary(1, k.device, offset=shift)
    k = apply_rotary(k[:, :, shift:].float(), cos, -sin).to(k.dtype)
    return k, v[:, :, shift:]


def _index_state(st, idx: torch.Tensor):
    if st is None:
        return None
    if isinstance(st, torch.Tensor):
        return st.index_select(0, idx)
    if isinstance(st, Mamba3State):
        return Mamba3State(*(t.index_select(0, idx) for t in st))
    if isinstance(st, KVCache):
        return st.k.index_select(0, idx), st.v.index_select(0, idx)
    if isinstance(st, (tuple, list)):
        return type(st)(_index_state(t, idx) for t in st)
    raise GolfError(f"eval.mode=stateful: cannot select rows of a mixer state of type {type(st).__name__}")


def _run_stateful(ev: _Eval) -> ChunkTrainer | None:
    """Sub-streams (whole documents where possible, see plan.stream_starts) run side by side as consecutive windows
    of seq_len with every block's state carried: SSM states in full, attention KV caches truncated to ``overlap``.
    kind=chunk: a chunk is a group of steps (one window of every sub-stream per step); after it is scored, all its
    windows are trained on, except the first input of a sub-stream that starts mid-val (it is the previous
    sub-stream's last target, scored only at the end)."""
    cfg, L = ev.cfg.ttt, ev.L
    overlap = ev.cfg.overlap if ev.cfg.overlap is not None else L
    starts = stream_starts(ev.tokens, ev.usable, max(1, ev.batch_tokens // L))
    ends = np.append(starts[1:], ev.usable)
    streams = [stream_windows(int(lo), int(hi), L, seg=s) for s, (lo, hi) in enumerate(zip(starts, ends))]
    nwin = np.array([len(w) for w in streams])
    max_steps = int(nwin.max())
    r0, r1 = ev.split(len(streams))
    blocks = list(ev.model.blocks)
    attn = [b.mixer if isinstance(b.mixer, CausalSelfAttention) else None for b in blocks]
    if cfg.kind == "chunk":
        spc = max(1, round(cfg.chunk_tokens / (len(streams) * L)))
        n_chunks = -(-max_steps // spc)
        trainer = ChunkTrainer(ev.model, cfg, n_chunks - 1)
    else:
        spc, n_chunks, trainer = max_steps, 1, None
    active = list(range(r0, r1))
    states = None
    try:
        for c in range(n_chunks):
            for j in range(c * spc, min((c + 1) * spc, max_steps)):
                now = [s for s in active if nwin[s] > j]
                if states is not None and len(now) < len(active):
                    keep = torch.tensor([active.index(s) for s in now], device=ev.device, dtype=torch.long)
                    states = [_index_state(st, keep) for st in states]
                active = now
                if not active:
                    continue
                w = Windows.concat([streams[s].take(slice(j, j + 1)) for s in active])
                x, y, scored, pos, all_scored, scored_np = gather(ev.tokens, w, ev.device)
                with torch.no_grad(), autocast_for(ev.device):
                    try:
                        logits, new_states = ev.model(x, states=states, return_states=True)
                    except TypeError as e:
                        raise GolfError(f"eval.mode=stateful needs mixers that take and return a state ({e})") from None
                ev.account(logits, x, y, scored, pos, all_scored, scored_np)
                states = [
                    truncate_kv(st[0], st[1], overlap, attn[i].rotary) if attn[i] is not None else st
                    for i, st in enumerate(new_states)
                ]
            if trainer is not None and c < n_chunks - 1 and cfg.epochs > 0 and ev.keep_training():
                w = Windows.concat([s.take(slice(c * spc, (c + 1) * spc)) for s in streams])
                a = w.a + ((w.a == starts[w.seg]) & (w.a > 0))
                ok = w.e > a
                ev.train_spans(trainer, a[ok], w.e[ok])
    finally:
        if trainer is not None:
            trainer.restore()
    return trainer


# ---------------------------------------------------------------------------------------------------------------
# doc_isolated + per-document LoRA
# ---------------------------------------------------------------------------------------------------------------


def _run_lora(ev: _Eval) -> BatchedLoRA:
    """Each document gets a fresh LoRA; its chunks are scored in order, and after each chunk but the last the
    document's adapter takes ``epochs`` steps on that chunk (its window: the chunk's targets with up to seq_len of the
    document's own, already scored, prefix). Documents never share an adapter and the base weights are frozen, so
    documents are independent: they are sorted by length for batching and dealt round-robin to ranks, with no
    collective until the final sums."""
    cfg, L = ev.cfg.ttt, ev.L
    lo, hi = doc_segments(ev.tokens, ev.usable)
    docs = [doc_chunks(int(a), int(b), L, cfg.chunk_tokens, seg=int(a)) for a, b in zip(lo, hi)]
    nch = np.array([len(d) for d in docs])
    order = np.argsort(-nch, kind="stable")
    mine = order[ev.rank :: ev.world]
    rows = cfg.lora_docs or ev.batch_seqs
    lora = BatchedLoRA(ev.model, cfg, ev.device)
    try:
        for b0 in range(0, len(mine), rows):
            batch = [int(d) for d in mine[b0 : b0 + rows]]
            lora.reset(len(batch))
            for j in range(int(nch[batch[0]])):
                act = [d for d in batch if nch[d] > j]  # a prefix: the batch is sorted by chunk count
                w = Windows.concat([docs[d].take(slice(j, j + 1)) for d in act])
                x, y, scored, pos, all_scored, scored_np = gather(ev.tokens, w, ev.device)
                with torch.no_grad(), autocast_for(ev.device):
                    logits = ev.model(x)
                ev.account(logits, x, y, scored, pos, all_scored, scored_np, lineage=w.seg)
                trainable = np.array([nch[d] > j + 1 for d in act])
                if cfg.epochs == 0 or not trainable.any() or not ev.keep_training(collective=False):
                    continue
                t = time.perf_counter()
                weight = torch.from_numpy(trainable.astype(np.float32)).to(ev.device)
                with torch.enable_grad():
                    for _ in range(cfg.epochs):
                        with autocast_for(ev.device):
                            logits = ev.model(x)
                        nll = masked_nll(logits, y, scored)
                        per_doc = nll.sum(1) / scored.sum(1).clamp(min=1)
                        lora.step((per_doc * weight).sum())
                ev.lora_chunks += int(trainable.sum())
                if ev.trace is not None:
                    tw = w.take(trainable)
                    lin = np.concatenate([np.full(e - a + 1, s) for a, e, s in zip(tw.a, tw.e, tw.seg)])
                    ev.trace.update(spans_positions(tw.a, tw.e), lin)
                ev.ttt_seconds += time.perf_counter() - t
    finally:
        lora.close()
    return lora


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------


def evaluate(
    model: nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    luts: ByteLUTs,
    device: torch.device | str,
    config: EvalConfig | None = None,
    *,
    batch_tokens: int = 524_288,
    trace: bool = False,
) -> ModeResult:
    """Score ``tokens`` (the whole val split, as from GolfData.load_val()) under ``config``. Every rank passes the
    same array and takes its share; the sums are all-reduced in float64 when torch.distributed is up (every rank must
    call this). ``batch_tokens`` is the default of config.batch_tokens (data.val_forward_tokens). The model's weights
    are restored after TTT. ``trace``: also return a per-target :class:`Trace` (this rank's targets)."""
    cfg = config or EvalConfig()
    cfg.check(seq_len)
    device = torch.device(device)
    if cfg.ttt.kind != "none" and torch.is_inference_mode_enabled():
        raise GolfError(
            "eval.ttt needs autograd: call golf.eval.evaluate under torch.no_grad at most, not inference_mode"
        )
    tokens = np.asarray(tokens)
    if len(tokens) < seq_len + 1:
        raise GolfError(f"val split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    ev = _Eval(model, tokens, seq_len, luts, device, cfg, cfg.batch_tokens or batch_tokens, trace)
    was_training = model.training
    model.eval()
    steps = chunks = 0
    try:
        if cfg.ttt.kind == "lora":
            steps, chunks = _run_lora(ev).steps, ev.lora_chunks
        elif cfg.mode == "stateful":
            trainer = _run_stateful(ev)
            steps, chunks = (trainer.steps, trainer.chunks) if trainer else (0, 0)
        else:
            if cfg.mode == "windows":
                plan, cuts = windows_plan(ev.usable, seq_len), None
            elif cfg.mode == "sliding":
                plan, cuts = sliding_plan(ev.usable, seq_len, cfg.stride), None
            else:
                plan = doc_isolated_plan(tokens, ev.usable, seq_len, cfg.stride)
                cuts = doc_segments(tokens, ev.usable)[0]
            trainer = _run_plan(ev, plan, cuts)
            steps, chunks = (trainer.steps, trainer.chunks) if trainer else (0, 0)
        out = ev.metric.compute()
    finally:
        model.train(was_training)
    stopped, ttt_seconds = ev.stopped, ev.ttt_seconds
    if ev.distributed and cfg.ttt.kind != "none":
        t = torch.tensor([float(stopped), ttt_seconds], device=device, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        stopped, ttt_seconds = bool(t[0].item()), float(t[1].item())
        if cfg.ttt.kind == "lora":  # ranks adapt different documents: report the total
            n = torch.tensor([steps, chunks], device=device, dtype=torch.float64)
            dist.all_reduce(n)
            steps, chunks = int(n[0].item()), int(n[1].item())
    return ModeResult(
        float(out["val_loss"]), float(out["val_bpb"]), int(out["tokens"]), int(out["bytes"]),
        time.perf_counter() - ev.t0, mode=cfg.mode, ttt=cfg.ttt.kind, ttt_seconds=ttt_seconds, ttt_steps=steps,
        ttt_chunks=chunks, ttt_stopped_early=stopped, trace=ev.trace,
    )
