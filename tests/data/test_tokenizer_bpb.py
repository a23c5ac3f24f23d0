"""Byte accounting of BPB: the LUT rules on crafted pieces, and totals against an independent byte count."""

import math

import pytest
import torch

from golf.data.tokenizer import BOS_ID, build_byte_luts, load_tokenizer, normalized_text, train_tokenizer
from golf.metrics import BitsPerByte


class FakeSP:
    """Just enough of SentencePieceProcessor to pin each LUT rule to a crafted piece."""

    pieces = ["<pad>", "<s>", "</s>", "<unk>", "<0x41>", "\u2581the", "the", "\u00e9t\u00e9", "\u2581", "<unused>"]

    def get_piece_size(self):
        return len(self.pieces)

    def id_to_piece(self, i):
        return self.pieces[i]

    def is_control(self, i):
        return i in (0, 1, 2)

    def is_unknown(self, i):
        return i == 3

    def is_unused(self, i):
        return i == 9

    def is_byte(self, i):
        return i == 4


def test_lut_rules_on_crafted_pieces():
    luts = build_byte_luts(FakeSP(), vocab_size=12)
    assert luts.base_bytes.tolist() == [0, 0, 0, 0, 1, 3, 3, 5, 0, 0, 0, 0]  # byte-fallback = 1; é = 2 bytes
    assert luts.is_boundary.tolist() == [True] * 4 + [False] * 5 + [True] * 3  # control, unk, unused, padding ids
    assert luts.has_leading_space.tolist() == [False] * 5 + [True, False, False, True] + [False] * 3
    prev = torch.tensor([1, 6, 1, 6, 0])
    tgt = torch.tensor([5, 5, 8, 8, 4])
    # "▁the" after BOS: 3 (no space); after a normal token: 4; lone "▁": 0 / 1; byte token: 1.
    assert luts.target_bytes(prev, tgt).tolist() == [3, 4, 0, 1, 1]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, austen_docs):
    return train_tokenizer(austen_docs[:40], 1024, tmp_path_factory.mktemp("tok") / "sp.model")


def test_lut_total_equals_normalized_utf8_bytes_on_real_documents(tokenizer, austen_docs):
    """nmt_nfkc is not byte-lossless (NFKC, whitespace runs and newlines collapsed), so BPB counts the bytes of the
    normalized text; this checks that count exactly, document by document, with BOS before each as in the shards."""
    sp = load_tokenizer(tokenizer)
    luts = build_byte_luts(sp, 1024)
    docs = austen_docs[100:130] + ["Caf\u00e9 \ufb01ne\u2014\u00bd \U0001f600  spaces\n\nand\tTABS 12345"]
    ids = []
    expected = 0
    for doc in docs:
        ids += [BOS_ID] + sp.encode(doc)
        expected += len(normalized_text(tokenizer, doc).encode("utf-8"))
    ids = torch.tensor(ids)
    assert luts.target_bytes(ids[:-1], ids[1:]).sum().item() == expected
    raw = sum(len(d.encode("utf-8")) for d in docs)
    assert expected < raw  # collapsed whitespace and newlines: what differs from the raw bytes


def test_bpb_formula_and_float64_sums():
    metric = BitsPerByte()
    metric.update(torch.tensor(100.0), 50, 120)
    metric.update(torch.tensor(44.0), 30, 80)
    out = metric.compute()
    assert out["val_loss"].dtype == torch.float64
    assert out["val_loss"].item() == pytest.approx(144.0 / 80)
    assert out["val_bpb"].item() == pytest.approx(144.0 / 80 / math.log(2) * 80 / 200)
