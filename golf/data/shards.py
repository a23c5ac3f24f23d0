"""Token shards in the challenge's exact binary format (parameter-golf.md §2.1).

A shard is a 256 x int32 little-endian header (magic 20240520, version 1, token count, zeros) followed by
``count`` little-endian uint16 token ids. Files are named ``fineweb_{train,val}_NNNNNN.bin``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from golf.errors import GolfError

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_TOKENS_PER_SHARD = 2**31 - 1


def shard_name(split: str, index: int) -> str:
    return f"fineweb_{split}_{index:06d}.bin"


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> None:
    """Write ``tokens`` (any int array with values < 65536) as one shard, atomically (temp file + rename)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(np.uint16).max):
        raise ValueError("token ids must fit in uint16 (0..65535)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(TOKEN_DTYPE, copy=False).tobytes())
    os.replace(tmp, path)


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    num_tokens: int


def read_header(path: Path) -> ShardInfo:
    """Validate a shard's header and size without reading its tokens; raise GolfError naming the file and fix."""
    fix = "re-create it with `golf data prepare` (or re-download the official shard)"
    if not path.is_file():
        raise GolfError(f"{path}: shard not found; {fix}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise GolfError(f"{path}: {size} bytes is shorter than the 1024-byte shard header (empty or truncated); {fix}")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != SHARD_MAGIC:
        raise GolfError(f"{path}: wrong magic {int(header[0])} (expected {SHARD_MAGIC}), not a challenge shard; {fix}")
    if int(header[1]) != SHARD_VERSION:
        raise GolfError(f"{path}: unsupported shard version {int(header[1])} (expected {SHARD_VERSION}); {fix}")
    count = int(header[2])
    expected = HEADER_BYTES + 2 * count
    if count < 0 or size != expected:
        raise GolfError(
            f"{path}: size {size} bytes does not match the header's {count} tokens (expected {expected}); "
            f"the file is truncated or corrupt; {fix}"
        )
    return ShardInfo(path, count)


def load_tokens(path: Path, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map a shard's tokens (uint16, read-only) after validating it; optionally check ids < vocab_size."""
    info = read_header(path)
    tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(info.num_tokens,))
    if vocab_size is not None and info.num_tokens:
        top = int(tokens.max())
        if top >= vocab_size:
            raise GolfError(
                f"{path}: token id {top} >= vocab_size {vocab_size}; the shards were made with a larger tokenizer — "
                f"set data.vocab_size / data.tokenizer to the one used by `golf data prepare`"
            )
    return tokens


def find_shards(data_dir: Path, split: str) -> list[Path]:
    return sorted(Path(data_dir).glob(f"fineweb_{split}_*.bin"))
