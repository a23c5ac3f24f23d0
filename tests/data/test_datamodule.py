import json

import numpy as np
import pytest
import torch

from golf.data.datamodule import BatchLayout, GolfData, TokenStream, TrainWindows
from golf.data.prepare import prepare
from golf.data.shards import find_shards, load_tokens
from golf.data.tokenizer import BOS_ID, load_tokenizer
from golf.errors import GolfError


def test_prepare_writes_val_first_with_bos_per_document(tiny_data, austen_docs):
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    assert manifest["val"]["docs"] == 6 and manifest["train"]["docs"] == 54
    val = np.asarray(load_tokens(find_shards(tiny_data, "val")[0]))
    assert val[0] == BOS_ID and (val == BOS_ID).sum() == 6
    sp = load_tokenizer(tiny_data / manifest["tokenizer"])
    decoded = sp.decode(val[1 : np.flatnonzero(val == BOS_ID)[1]].tolist())
    assert decoded.split()[:5] == " ".join(decoded.split()).split()[:5]  # a real Austen chapter, normalized
    assert manifest["val"]["tokens"] == len(val)


def test_prepare_rejects_too_few_documents(tmp_path):
    with pytest.raises(GolfError, match="at least 2"):
        prepare(["only one"], tmp_path)


def test_stream_wraps_across_shards():
    stream = TokenStream([np.arange(5), np.arange(10, 13)])
    assert stream.take(6, 6).tolist() == [11, 12, 0, 1, 2, 3]


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_global_batch_is_identical_for_any_world_size(world):
    """Per step, the union over ranks and micro-steps of the windows equals the 1-process run's (baseline loader)."""
    stream = TokenStream([np.arange(100_000) % 60_000])
    ref = TrainWindows(stream, BatchLayout(seq_len=16, world=1, accum=8, micro_seqs=2), rank=0)
    for step in (0, 3):
        expected = ref.batch(step).reshape(-1, 17)
        lay = BatchLayout(seq_len=16, world=world, accum=8 // world, micro_seqs=2)
        per_rank = [TrainWindows(stream, lay, rank=r).batch(step) for r in range(world)]
        # 1-process micro-step m*world + r is rank r's micro-step m.
        got = torch.stack([per_rank[r][m] for m in range(8 // world) for r in range(world)]).reshape(-1, 17)
        assert torch.equal(got, expected)


def test_train_windows_are_shifted_targets_and_resume_exactly():
    stream = TokenStream([np.arange(10_000)])
    lay = BatchLayout(seq_len=8, world=1, accum=2, micro_seqs=3)
    batch = TrainWindows(stream, lay, rank=0).batch(0)
    assert batch.shape == (2, 3, 9)
    assert batch[0, 0].tolist() == list(range(9)) and batch[0, 1, 0] == 8  # windows share the boundary token
    span = 3 * 8 + 1  # each micro-step reads micro_tokens + 1 contiguous tokens
    for m in range(2):
        assert all(batch[m, r].tolist() == list(range(m * span + 8 * r, m * span + 8 * r + 9)) for r in range(3))
    resumed = iter(TrainWindows(stream, lay, rank=0, start_step=5))
    assert torch.equal(next(resumed), TrainWindows(stream, lay, rank=0).batch(5))


def test_val_split_is_truncated_to_whole_windows_and_split_over_ranks(tiny_data):
    dm = GolfData(data_dir=str(tiny_data), vocab_size=512, seq_len=128, val_batch_tokens=1024, train_batch_tokens=1024)
    dm.setup("validate")
    val = dm.load_val()
    usable = (len(val) - 1) // 128
    from golf.data.datamodule import ValWindows

    seen = []
    for world in (1, 3):
        rows = torch.cat([torch.cat(list(ValWindows(val, 128, 4, r, world))) for r in range(world)])
        assert rows.shape == (usable, 129)
        seen.append(rows)
    assert torch.equal(seen[0], seen[1])


def test_val_forward_holds_the_same_tokens_per_rank_on_any_world_size(tiny_data):
    """val_batch_tokens is split like a training step (grad accumulation 8 / world), as the challenge splits
    VAL_BATCH_SIZE: a 1-rank run must not put the whole global val batch into one forward."""
    from types import SimpleNamespace

    dm = GolfData(data_dir=str(tiny_data), vocab_size=512, seq_len=64, train_batch_tokens=4096, val_batch_tokens=8192)
    dm.setup("validate")
    assert dm.val_forward_tokens == 1024  # 8 micro-steps of 512 tokens on one rank
    assert next(iter(dm.val_dataloader())).shape == (16, 65)
    for world in (2, 8):
        dm.trainer = SimpleNamespace(world_size=world, global_rank=0)
        assert dm.val_forward_tokens // world == 1024  # per rank, per forward: unchanged


def test_vocab_mismatch_and_missing_pieces_are_clear(tiny_data, tmp_path):
    with pytest.raises(GolfError, match="set data.vocab_size: 512"):
        GolfData(data_dir=str(tiny_data), vocab_size=1024).setup("fit")
    with pytest.raises(GolfError, match="data directory not found"):
        GolfData(data_dir=str(tmp_path / "nope")).setup("fit")
