"""Typed configuration of the final evaluation: which legal mode scores the val split, and score-first test-time
training (parameter-golf.md §1.3, §4.3; ssm.md §1.4, §2.2). These dataclasses are the ``eval:`` section of the
Finalize callback in a fit YAML and the ``--eval.*`` flags of ``golf validate --artifact``."""

from __future__ import annotations

from dataclasses import dataclass, field

from golf.errors import GolfError

MODES = ("windows", "sliding", "doc_isolated", "stateful")
TTT_KINDS = ("none", "chunk", "lora")


@dataclass
class TTTConfig:
    """Score-first test-time training. Every token is scored under ``torch.no_grad`` before any update uses it."""

    kind: str = "none"
    """none | chunk (global SGD on the stream, chunk by chunk; windows, sliding, doc_isolated and stateful modes) |
    lora (a fresh LoRA per document, adapted chunk by chunk inside the document; doc_isolated mode only)."""
    chunk_tokens: int = 32768
    """Targets per TTT chunk. kind=chunk: a chunk of the val stream (stateful: rounded to whole steps of all
    sub-streams). kind=lora: a chunk of one document; must be <= data.seq_len."""
    epochs: int = 1
    """Optimizer steps per chunk (kind=chunk: each step on the whole chunk, gradients summed over micro-batches and
    ranks; kind=lora: each step on the chunk's window). The last chunk (of the stream, or of a document) is never
    trained on."""
    optimizer: str = "sgd"
    """sgd (with ``momentum``) or adam (betas 0.9/0.999, no weight decay)."""
    lr: float = 0.01
    """Learning rate of the TTT optimizer."""
    momentum: float = 0.9
    """SGD momentum (ignored by adam)."""
    lr_schedule: str = "constant"
    """constant or cosine (kind=chunk: decays from lr to 0 over the trained chunks)."""
    grad_clip: float = 1.0
    """kind=chunk: clip the global gradient norm to this value before each step; 0 disables."""
    params: str = "all"
    """kind=chunk: which parameters adapt: all | matrices (2-D weights of the blocks, not the embedding) | a regular
    expression searched in the parameter names (e.g. ``blocks\\.[4-8]\\.``)."""
    lora_rank: int = 8
    """kind=lora: rank r of each adapter (delta W = A B, A: in x r random, B: r x out zeros, so it starts at 0)."""
    lora_targets: list[str] = field(default_factory=lambda: ["c_q", "c_v", "in_proj", "out_proj"])
    """kind=lora: names (last component) of the Linear modules that get an adapter: attention c_q/c_k/c_v/proj,
    SSM in_proj/out_proj, MLP fc/proj."""
    lora_docs: int | None = None
    """kind=lora: documents adapted side by side per rank (one adapter each); default batch_tokens // (ranks x
    seq_len)."""

    def check(self) -> None:
        if self.kind not in TTT_KINDS:
            raise GolfError(f"eval.ttt.kind={self.kind!r}: use one of {', '.join(TTT_KINDS)}")
        if self.kind == "none":
            return
        if self.chunk_tokens < 1 or self.epochs < 0:
            raise GolfError("eval.ttt: chunk_tokens must be >= 1 and epochs >= 0")
        if self.optimizer not in ("sgd", "adam"):
            raise GolfError(f"eval.ttt.optimizer={self.optimizer!r}: use sgd or adam")
        if self.lr_schedule not in ("constant", "cosine"):
            raise GolfError(f"eval.ttt.lr_schedule={self.lr_schedule!r}: use constant or cosine")
        if self.kind == "lora" and (self.lora_rank < 1 or not self.lora_targets):
            raise GolfError("eval.ttt: kind=lora needs lora_rank >= 1 and at least one name in lora_targets")


@dataclass
class EvalConfig:
    """How the final (artifact) score is computed. Every mode scores the same targets, val positions
    1 .. ((len(val) - 1) // seq_len) * seq_len (the challenge's usable tokens), each exactly once, with a full
    softmax over the vocabulary; they differ only in the context each target sees. See docs/eval.md."""

    mode: str = "windows"
    """windows: non-overlapping seq_len windows, each target sees its window's prefix (the baseline; identical to
    golf.evaluate.evaluate_bpb). sliding: windows of seq_len every ``stride`` tokens; the first scores all its
    targets, later ones their last ``stride``, so every target but the first seq_len sees >= seq_len - stride
    tokens. doc_isolated: like sliding but the context never crosses a BOS document boundary (the BOS opening a
    document is scored as the last target of the document before it). stateful: each sub-stream is run as
    consecutive non-overlapping windows with the SSM state carried across windows and attention seeing the last
    ``overlap`` tokens of the past through a truncated KV cache."""
    stride: int = 64
    """sliding/doc_isolated: tokens between window starts (1..seq_len; seq_len gives non-overlapping windows)."""
    overlap: int | None = None
    """stateful: past tokens kept in each attention layer's KV cache across windows (default seq_len; 0: attention
    sees only the current window while the SSM state still carries everything)."""
    batch_tokens: int | None = None
    """Global tokens per forward (windows per forward = batch_tokens // (ranks x seq_len)); stateful: the number of
    parallel sub-streams is batch_tokens // seq_len over all ranks. Default: data.val_forward_tokens."""
    ttt: TTTConfig = field(default_factory=TTTConfig)
    """Score-first test-time training (kind none | chunk | lora)."""
    time_budget_seconds: float | None = None
    """Stop TTT adaptation (never scoring) once the evaluation has run this long; recorded in the result as
    ttt_stopped_early. None: no limit."""

    def check(self, seq_len: int | None = None) -> None:
        if self.mode not in MODES:
            raise GolfError(f"eval.mode={self.mode!r}: use one of {', '.join(MODES)}")
        self.ttt.check()
        if seq_len is not None and self.mode in ("sliding", "doc_isolated") and not 1 <= self.stride <= seq_len:
            raise GolfError(f"eval.stride={self.stride} must be between 1 and data.seq_len={seq_len}")
        if self.overlap is not None and self.overlap < 0:
            raise GolfError(f"eval.overlap={self.overlap} must be >= 0")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise GolfError(f"eval.batch_tokens={self.batch_tokens} must be >= 1")
        if self.ttt.kind == "lora":
            if self.mode != "doc_isolated":
                raise GolfError(
                    f"eval.ttt.kind=lora adapts one LoRA per document and needs eval.mode=doc_isolated "
                    f"(got {self.mode}); "
                    f"use eval.ttt.kind=chunk for {self.mode}"
                )
            if seq_len is not None and self.ttt.chunk_tokens > seq_len:
                raise GolfError(
                    f"eval.ttt.chunk_tokens={self.ttt.chunk_tokens} must be <= data.seq_len={seq_len} for kind=lora"
                )
