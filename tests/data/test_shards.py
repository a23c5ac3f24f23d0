import numpy as np
import pytest

from golf.data.shards import HEADER_BYTES, SHARD_MAGIC, load_tokens, read_header, write_shard
from golf.errors import GolfError


def test_round_trip(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 65536, size=1000, dtype=np.uint16)
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, tokens)
    assert path.stat().st_size == HEADER_BYTES + 2 * len(tokens)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == SHARD_MAGIC and header[1] == 1 and header[2] == 1000 and not header[3:].any()
    assert np.array_equal(load_tokens(path), tokens)


def _shard(tmp_path, n=100):
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, np.arange(n, dtype=np.uint16))
    return path


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: p.unlink(), "shard not found"),
        (lambda p: p.write_bytes(b""), "shorter than the 1024-byte shard header"),
        (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
        (lambda p: p.write_bytes(np.int32(7).tobytes() + p.read_bytes()[4:]), "wrong magic"),
        (lambda p: p.write_bytes(p.read_bytes()[:4] + np.int32(2).tobytes() + p.read_bytes()[8:]), "version"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\0\0"), "does not match the header"),
    ],
    ids=["missing", "empty", "truncated", "wrong-magic", "wrong-version", "trailing-bytes"],
)
def test_header_errors_name_file_and_fix(tmp_path, corrupt, message):
    path = _shard(tmp_path)
    corrupt(path)
    with pytest.raises(GolfError, match=message) as err:
        read_header(path)
    assert str(path) in str(err.value) and "golf data prepare" in str(err.value)
    assert "\n" not in str(err.value)


def test_token_ids_must_be_below_vocab(tmp_path):
    path = _shard(tmp_path, n=100)
    assert len(load_tokens(path, vocab_size=100)) == 100
    with pytest.raises(GolfError, match="token id 99 >= vocab_size 64"):
        load_tokens(path, vocab_size=64)
