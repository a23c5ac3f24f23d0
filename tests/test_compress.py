"""Compressors, bounded decompression, byte shuffle, and the per-tensor compressibility report."""

import lzma
import zlib

import brotli
import pytest
import torch
import zstandard

from golf.compress import (
    METHODS,
    byte_shuffle,
    byte_unshuffle,
    compress,
    compress_best,
    decompress,
    shuffle_tensors,
    tensor_bytes,
    unshuffle_tensors,
)
from golf.errors import GolfError
from golf.quant import QuantScheme, quantize_state_dict
from golf.report_compress import format_table, plot_roles, role_summary, tensor_report


def _payload() -> bytes:
    torch.manual_seed(0)
    w = (torch.randn(3000) * 0.02).half()
    return tensor_bytes(w) + bytes(range(256)) * 8 + b"\0" * 1000


@pytest.mark.parametrize("method", METHODS + ("best",))
@pytest.mark.parametrize("shuffle", [False, True])
def test_round_trip(method, shuffle):
    data = _payload()
    src = byte_shuffle(data, 2) if shuffle else data
    blob = compress(src, method)
    back = decompress(blob, method, max_output=len(src))
    assert (byte_unshuffle(back, 2) if shuffle else back) == data
    assert decompress(compress(b"", method), method, 0) == b""


def test_best_picks_the_smallest():
    data = _payload()
    res = compress_best(data)
    assert set(res.sizes) == set(METHODS)
    assert res.sizes == {m: len(compress(data, m)) for m in METHODS}
    assert len(res.data) == min(res.sizes.values()) == res.sizes[res.method]
    tagged = compress(data, "best")
    assert len(tagged) == len(res.data) + 1


def test_byte_shuffle_layout():
    data = bytes([1, 2, 3, 4, 5, 6])  # three 2-byte elements
    assert byte_shuffle(data, 2) == bytes([1, 3, 5, 2, 4, 6])
    assert byte_unshuffle(byte_shuffle(data, 2), 2) == data
    assert byte_shuffle(data, 3) == bytes([1, 4, 2, 5, 3, 6])
    with pytest.raises(ValueError):
        byte_shuffle(data, 4)


def test_shuffle_tensors_round_trip():
    t = {"a": torch.randn(5, 7), "b": torch.randn(9).bfloat16(), "c": torch.randint(-5, 5, (11,), dtype=torch.int8),
         "d": torch.tensor(3.5), "e": torch.arange(6, dtype=torch.int64).reshape(2, 3)}
    sh, info = shuffle_tensors(t)
    assert set(info) == {"a", "b", "d", "e"} and info["a"]["elem_size"] == 4 and sh["c"] is t["c"]
    assert all(sh[k].dtype == torch.uint8 for k in info)
    back = unshuffle_tensors(sh, info)
    for k, v in t.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def _bombs():
    zeros = b"\0" * (8 << 20)
    return {
        "zlib": zlib.compress(zeros, 1),
        "lzma": lzma.compress(zeros, preset=0),
        "brotli": brotli.compress(zeros, quality=1),
        "zstd": zstandard.ZstdCompressor(level=1).compress(zeros),  # declares its size
        "zstd_stream": zstandard.ZstdCompressor(level=1, write_content_size=False).compress(zeros),
    }


@pytest.mark.parametrize("kind", ["zlib", "lzma", "brotli", "zstd", "zstd_stream"])
def test_decompression_bomb_is_refused(kind):
    blob = _bombs()[kind]
    method = kind.split("_")[0]
    with pytest.raises(GolfError, match="limit") as e:
        decompress(blob, method, max_output=1 << 20, what="bomb.bin")
    assert "bomb.bin" in str(e.value)
    assert len(decompress(blob, method, max_output=8 << 20)) == 8 << 20  # the exact bound is accepted


@pytest.mark.parametrize("method", METHODS)
def test_truncated_corrupt_and_trailing_data_raise(method):
    data = _payload()
    blob = compress(data, method)
    with pytest.raises(GolfError, match="x.bin"):
        decompress(blob[: len(blob) // 2], method, len(data), what="x.bin")
    with pytest.raises(GolfError):
        decompress(blob[:-1], method, len(data))
    with pytest.raises(GolfError):
        decompress(blob + b"junk", method, len(data))
    with pytest.raises(GolfError):
        decompress(b"\x13" * 64, method, len(data))


def test_unknown_method():
    with pytest.raises(GolfError, match="compressor"):
        compress(b"x", "gzip")


# -----------------------------------------------------------------------------
# Compressibility report
# -----------------------------------------------------------------------------


def test_report_on_a_small_hybrid(tmp_path):
    torch.manual_seed(0)
    d = 64
    sd = {
        "tok_emb.weight": torch.randn(512, d) * 0.02,
        "blocks.0.mixer.c_q.weight": torch.randn(d, d) * 0.02,
        "blocks.0.mixer.c_k.weight": torch.randn(d, d) * 0.02,
        "blocks.0.mixer.proj.weight": torch.randn(d, d) * 0.02,
        "blocks.0.mixer.q_gain": torch.ones(4),
        "blocks.1.mixer.in_proj.weight": torch.randn(2 * d + 2 * d + 16 + 16 + 8, d) * 0.02,
        "blocks.1.mixer.dt_bias": torch.randn(8),
        "blocks.1.mix_scale": torch.ones(d),
    }
    r = [0, 128, 256, 272, 288, 296, 304, 312, 320]
    roles = ["z", "x", "B", "C", "dd_dt", "dd_A", "trap", "angles"]
    sd["blocks.1.mixer.in_proj.weight"] = torch.randn(r[-1], d) * 0.02
    groups = {"blocks.1.mixer.in_proj.weight": [(g, r[i], r[i + 1]) for i, g in enumerate(roles)]}
    qs = quantize_state_dict(sd, QuantScheme(method="int6", passthrough_max_numel=1024), row_groups=groups)
    rows = tensor_report(qs, compressors=("zlib", "zstd"))
    names = [row["name"] for row in rows]
    assert "blocks.1.mixer.in_proj.weight::dd_A" in names and "blocks.1.mixer.in_proj.weight" not in names
    by = {row["name"]: row for row in rows}
    dd_a = by["blocks.1.mixer.in_proj.weight::dd_A"]
    assert dd_a["role"] == "ssm_in_proj:dd_A" and dd_a["bits"] == 8 and dd_a["params"] == 8 * d
    assert dd_a["quant_bytes"] == 8 * d + 8 * 2  # int8 codes + fp16 row scales
    q = by["blocks.0.mixer.c_q.weight"]
    assert q["role"] == "attn_qkv" and q["zlib_bpp"] == q["zlib_bytes"] / q["params"]
    summary = role_summary(rows)
    total = summary[-1]
    assert total["role"] == "total" and total["params"] == sum(row["params"] for row in rows)
    assert total["zstd_bytes"] == sum(row["zstd_bytes"] for row in rows)
    assert {s["role"] for s in summary} >= {"embedding", "attn_qkv", "attn_out", "ssm_in_proj:z", "control"}
    assert "ssm_in_proj:dd_A" in format_table(summary)
    png = plot_roles(rows, tmp_path / "roles.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
