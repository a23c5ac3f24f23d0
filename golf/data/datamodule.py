"""LightningDataModule over challenge shards: the baseline's deterministic token stream for training, and the full
val split in non-overlapping windows for validation (parameter-golf.md §2.1, §3.2, §3.4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from golf.data.prepare import read_manifest
from golf.data.shards import find_shards, load_tokens
from golf.data.tokenizer import ByteLUTs, build_byte_luts, file_sha256, load_tokenizer
from golf.errors import GolfError


class TokenStream:
    """All shards of a split as one cyclic stream (the baseline's TokenStream wraps from the last shard to the first)."""

    def __init__(self, shards: list[np.ndarray]) -> None:
        self.shards = [s for s in shards if len(s)]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.total = int(self.starts[-1])

    def take(self, offset: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """``n`` tokens from ``offset`` (cyclic) as int64, into ``out`` when given."""
        out = np.empty(n, dtype=np.int64) if out is None else out
        filled, pos = 0, offset % self.total
        while filled < n:
            i = int(np.searchsorted(self.starts, pos, side="right")) - 1
            shard = self.shards[i]
            start = pos - int(self.starts[i])
            piece = shard[start : start + (n - filled)]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            pos = (pos + len(piece)) % self.total
        return out


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's global batch is split: ``world`` ranks x ``accum`` micro-steps x ``micro_seqs`` rows."""

    seq_len: int
    world: int
    accum: int
    micro_seqs: int

    @property
    def micro_tokens(self) -> int:
        return self.micro_seqs * self.seq_len

    def segment_offset(self, step: int, micro: int, rank: int) -> int:
        # Each micro-step takes world x (micro_tokens + 1) contiguous tokens and rank r reads the r-th span, so
        # the same global batch is read for any world size with accum = world-independent total (baseline loader).
        return ((step * self.accum + micro) * self.world + rank) * (self.micro_tokens + 1)


class TrainWindows(IterableDataset):
    """Yields, per optimizer step, this rank's ``[accum, micro_seqs, seq_len + 1]`` token windows, from ``start_step``.
    With ``pin_memory`` the batch is built in page-locked memory (CUDA's caching host allocator), ready for a
    non-blocking copy."""

    def __init__(
        self, stream: TokenStream, layout: BatchLayout, rank: int, start_step: int = 0, pin_memory: bool = False
    ) -> None:
        self.stream, self.layout, self.rank, self.start_step = stream, layout, rank, start_step
        self.pin_memory = pin_memory

    def batch(self, step: int) -> torch.Tensor:
        # Host time of a 1,048,576-token batch on the H200 machine (benchmarks/RESULTS.md, eighth session): 9.5 ms
        # with an index gather per micro-batch, a stack and the loader's pinning copy; 2.6 ms as a strided view of
        # each span copied once into a batch from the caching host allocator. (An A/B of the training step stayed
        # within the run-to-run spread.)
        lay = self.layout
        out = torch.empty(lay.accum, lay.micro_seqs, lay.seq_len + 1, dtype=torch.int64, pin_memory=self.pin_memory)
        span = torch.empty(lay.micro_tokens + 1, dtype=torch.int64)
        for m in range(lay.accum):
            self.stream.take(lay.segment_offset(step, m, self.rank), lay.micro_tokens + 1, out=span.numpy())
            # Overlapping windows of seq_len + 1: x = w[:-1], y = w[1:], exactly the baseline's reshape of the span.
            out[m] = span.as_strided((lay.micro_seqs, lay.seq_len + 1), (lay.seq_len, 1))
        return out

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


class ValWindows(IterableDataset):
    """This rank's share of the val split as ``[n, seq_len + 1]`` windows (non-overlapping targets), in order."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_seqs: int, rank: int, world: int) -> None:
        total_seqs = (len(tokens) - 1) // seq_len
        self.tokens, self.seq_len, self.batch_seqs = tokens, seq_len, batch_seqs
        self.first, self.last = total_seqs * rank // world, total_seqs * (rank + 1) // world

    def __iter__(self):
        L = self.seq_len
        for s in range(self.first, self.last, self.batch_seqs):
            e = min(s + self.batch_seqs, self.last)
            idx = np.arange(s, e)[:, None] * L + np.arange(L + 1)[None, :]
            yield torch.from_numpy(self.tokens[idx].astype(np.int64))


class GolfData(pl.LightningDataModule):
    def __init__(
        self,
        data_dir: str = "data/austen_sp1024",
        tokenizer: str | None = None,
        vocab_size: int = 1024,
        seq_len: int = 1024,
        train_batch_tokens: int = 524_288,
        micro_batch_tokens: int | None = None,
        val_batch_tokens: int = 524_288,
        val_max_tokens: int | None = None,
        pin_memory: bool = True,
    ) -> None:
        """
        Args:
            data_dir: Folder with fineweb_{train,val}_*.bin shards (and manifest.json from `golf data prepare`).
            tokenizer: SentencePiece .model; defaults to the one named in the manifest.
            vocab_size: Model vocabulary; every token id in the shards must be below it.
            seq_len: Training and evaluation window length.
            train_batch_tokens: Global tokens per optimizer step, over all ranks and micro-steps.
            micro_batch_tokens: Tokens per rank per forward/backward; default train_batch_tokens // 8, so that 1 to 8
                ranks run the same global batch with grad accumulation 8 / world_size, as the challenge does.
            val_batch_tokens: Global tokens per validation step (the challenge's VAL_BATCH_SIZE), scored in as many
                forwards as a training step has micro-steps (see ``val_forward_tokens``).
            val_max_tokens: Score only this prefix of the val split (smoke runs; the challenge scores all of it).
            pin_memory: Pinned host batches for non-blocking copies to the GPU.
        """
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.tokenizer_path = tokenizer
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.train_batch_tokens = train_batch_tokens
        self.micro_batch_tokens = micro_batch_tokens or max(seq_len, train_batch_tokens // 8)
        self.val_batch_tokens = val_batch_tokens
        self.val_max_tokens = val_max_tokens
        self.pin_memory = pin_memory
        self.byte_luts: ByteLUTs | None = None
        self.tokenizer_sha256: str | None = None
        self._train: TokenStream | None = None
        self._val: np.ndarray | None = None

    # -- setup and validation of the inputs ------------------------------------------------------------------------
    def resolve_tokenizer(self) -> Path:
        manifest = read_manifest(self.data_dir)
        if self.tokenizer_path is not None:
            path = Path(self.tokenizer_path)
        elif manifest and manifest.get("tokenizer"):
            path = Path(manifest["tokenizer"])
            path = path if path.is_absolute() else self.data_dir / path
        else:
            raise GolfError(f"{self.data_dir}: no manifest.json naming a tokenizer; set data.tokenizer to the .model file")
        sp = load_tokenizer(path)
        self.tokenizer_sha256 = file_sha256(path)
        if manifest:
            if manifest.get("tokenizer_sha256") and manifest["tokenizer_sha256"] != self.tokenizer_sha256:
                raise GolfError(
                    f"{path}: tokenizer does not match the one that made {self.data_dir} (sha256 differs from "
                    f"manifest.json); use the manifest's tokenizer or re-run `golf data prepare`"
                )
            if manifest.get("vocab_size") and manifest["vocab_size"] != self.vocab_size:
                raise GolfError(
                    f"{self.data_dir / 'manifest.json'}: shards were made with vocab {manifest['vocab_size']} but "
                    f"data.vocab_size is {self.vocab_size}; set data.vocab_size: {manifest['vocab_size']}"
                )
        if sp.get_piece_size() > self.vocab_size:
            raise GolfError(
                f"{path}: tokenizer has {sp.get_piece_size()} pieces but data.vocab_size is {self.vocab_size}; "
                f"set data.vocab_size to at least {sp.get_piece_size()}"
            )
        self.byte_luts = build_byte_luts(sp, self.vocab_size)
        return path

    def layout(self, world: int) -> BatchLayout:
        per_step = world * self.micro_batch_tokens
        if self.micro_batch_tokens % self.seq_len:
            raise GolfError(f"data.micro_batch_tokens {self.micro_batch_tokens} must be a multiple of data.seq_len {self.seq_len}")
        if self.train_batch_tokens % per_step:
            raise GolfError(
                f"data.train_batch_tokens {self.train_batch_tokens} must be a multiple of world_size {world} x "
                f"data.micro_batch_tokens {self.micro_batch_tokens}; change one of them (or the number of devices)"
            )
        return BatchLayout(self.seq_len, world, self.train_batch_tokens // per_step, self.micro_batch_tokens // self.seq_len)

    def load_val(self) -> np.ndarray:
        if self._val is None:
            paths = find_shards(self.data_dir, "val")
            if not paths:
                raise GolfError(f"{self.data_dir}: no fineweb_val_*.bin shards; run `golf data prepare --out {self.data_dir}`")
            tokens = np.concatenate([np.asarray(load_tokens(p, self.vocab_size)) for p in paths])
            if self.val_max_tokens:
                tokens = tokens[: self.val_max_tokens + 1]
            if len(tokens) < self.seq_len + 1:
                raise GolfError(
                    f"{self.data_dir}: val split has {len(tokens)} tokens, fewer than data.seq_len + 1 = {self.seq_len + 1}; "
                    f"lower data.seq_len or hold out more --val-docs"
                )
            self._val = tokens
        return self._val

    def load_train(self) -> TokenStream:
        if self._train is None:
            paths = find_shards(self.data_dir, "train")
            if not paths:
                raise GolfError(f"{self.data_dir}: no fineweb_train_*.bin shards; run `golf data prepare --out {self.data_dir}`")
            stream = TokenStream([load_tokens(p, self.vocab_size) for p in paths])
            if stream.total == 0:
                raise GolfError(f"{self.data_dir}: train shards hold no tokens; re-run `golf data prepare`")
            self._train = stream
        return self._train

    def setup(self, stage: str) -> None:
        if not self.data_dir.is_dir():
            raise GolfError(f"{self.data_dir}: data directory not found; run `golf data prepare --out {self.data_dir}` first")
        if self.byte_luts is None:
            self.resolve_tokenizer()
        self.load_val()
        if stage == "fit":
            self.load_train()
            self.layout(self.world_size)

    # -- loaders ---------------------------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def train_tokens_total(self) -> int:
        return self.load_train().total

    def train_dataloader(self) -> DataLoader:
        # The position in the stream is a function of the optimizer step, so resuming from a checkpoint (global_step
        # restored before this is called) continues exactly where the interrupted run was.
        start = self.trainer.global_step if self.trainer is not None else 0
        pin = self.pin_memory and torch.cuda.is_available()  # the windows are built in pinned memory, not copied there
        layout = self.layout(self.world_size)
        dataset = TrainWindows(self.load_train(), layout, self.rank, start_step=start, pin_memory=pin)
        return DataLoader(dataset, batch_size=None, num_workers=0)

    @property
    def val_forward_tokens(self) -> int:
        """Global tokens per validation forward: val_batch_tokens // grad-accumulation steps, as the challenge's
        scripts split VAL_BATCH_SIZE, so that a rank's forward holds the same tokens on 1 GPU as on 8 (one GPU at
        1,048,576 tokens of sp8192 in one forward would need ~80 GB for the logits alone)."""
        return max(self.world_size * self.seq_len, self.val_batch_tokens // self.layout(self.world_size).accum)

    def val_dataloader(self) -> DataLoader:
        batch_seqs = max(1, self.val_forward_tokens // (self.world_size * self.seq_len))
        dataset = ValWindows(self.load_val(), self.seq_len, batch_seqs, self.rank, self.world_size)
        return DataLoader(dataset, batch_size=None, num_workers=0, pin_memory=self.pin_memory and torch.cuda.is_available())

    def state_dict(self) -> dict:
        return {"tokenizer_sha256": self.tokenizer_sha256}
