"""SentencePiece tokenizer with the challenge's settings, and the byte lookup tables behind BPB (parameter-golf.md §1.4, §2.4)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from golf.errors import GolfError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# The challenge's build_sentencepiece_tokenizer settings. SentencePiece skips "sentences" longer than
# max_sentence_length, so documents are fed paragraph by paragraph (see _training_sentences).
CHALLENGE_TRAINER_ARGS = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    pad_id=PAD_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    unk_id=UNK_ID,
    hard_vocab_limit=False,
    max_sentence_length=16384,
)


def _training_sentences(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for line in text.replace("\x00", " ").split("\n"):
            line = line.strip()
            if line:
                yield line


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_path: Path, num_threads: int = 2) -> Path:
    """Train a BPE tokenizer on ``texts`` and write it to ``model_path`` (a ``.model`` file)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_training_sentences(texts),
        model_writer=model,
        vocab_size=vocab_size,
        num_threads=num_threads,
        minloglevel=2,
        **CHALLENGE_TRAINER_ARGS,
    )
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(model.getvalue())
    return model_path


def load_tokenizer(path: str | Path) -> spm.SentencePieceProcessor:
    path = Path(path)
    if not path.is_file():
        raise GolfError(f"{path}: tokenizer not found; run `golf data prepare` or set data.tokenizer to a .model file")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(path))
    except (OSError, RuntimeError) as e:
        raise GolfError(f"{path}: not a SentencePiece model ({e}); set data.tokenizer to a .model file") from None
    return sp


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ByteLUTs:
    """Per-token byte accounting: ``bytes(tgt | prev) = base_bytes[tgt] + (leading_space[tgt] & ~is_boundary[prev])``."""

    base_bytes: torch.Tensor  # int16 [V]
    has_leading_space: torch.Tensor  # bool [V]
    is_boundary: torch.Tensor  # bool [V]

    def target_bytes(self, prev: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        base = self.base_bytes[tgt].to(torch.int32)
        space = self.has_leading_space[tgt] & ~self.is_boundary[prev]
        return base + space.to(torch.int32)

    def to(self, device: torch.device | str) -> ByteLUTs:
        return ByteLUTs(self.base_bytes.to(device), self.has_leading_space.to(device), self.is_boundary.to(device))


def build_byte_luts(sp: spm.SentencePieceProcessor, vocab_size: int) -> ByteLUTs:
    """The challenge's ``build_sentencepiece_luts``: control/unknown/unused ids are 0-byte boundaries,
    byte-fallback pieces count 1 byte, other pieces count the UTF-8 length without a leading ``▁`` (which is
    counted as one space byte only when the previous token is not a boundary). Sized max(sp vocab, vocab_size)."""
    size = max(sp.get_piece_size(), vocab_size)
    base = np.zeros(size, dtype=np.int16)
    lead = np.zeros(size, dtype=np.bool_)
    boundary = np.ones(size, dtype=np.bool_)
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            lead[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteLUTs(torch.from_numpy(base), torch.from_numpy(lead), torch.from_numpy(boundary))


def normalized_text(model_path: str | Path, text: str) -> str:
    """The text as the tokenizer sees it after its normalizer (nmt_nfkc: NFKC, whitespace runs collapsed, newlines to
    spaces, leading/trailing whitespace removed), with ``▁`` shown as a space. BPB counts these bytes, not the raw ones."""
    normalizer = spm.SentencePieceNormalizer(model_file=str(model_path))
    return normalizer.normalize(text).replace("\u2581", " ")
