"""Per-row int-N: ranges, clip rules, scales."""

import pytest
import torch

from golf.errors import GolfError
from golf.quant import QuantScheme, dequantize_state_dict, quantize_state_dict
from golf.quant.intn import levels, quantize_per_row, quantize_per_tensor, row_scales


@pytest.mark.parametrize("bits,lv", [(8, 127), (7, 63), (6, 31), (5, 15)])
def test_code_range(bits, lv):
    torch.manual_seed(0)
    w = torch.randn(64, 300) * torch.rand(64, 1) * 5
    q, s = quantize_per_row(w, bits, "absmax")
    assert levels(bits) == lv
    assert q.dtype == torch.int8 and s.dtype == torch.float16
    assert int(q.abs().max()) == lv  # absmax reaches the end of the grid
    assert int(q.min()) >= -lv and int(q.max()) <= lv


def test_int6_scheme_codes_in_pm31_and_error_bound():
    torch.manual_seed(1)
    w = torch.randn(300, 256)
    qs = quantize_state_dict({"w": w}, QuantScheme(method="int6", clip="absmax"))
    q, s = qs.tensors["w#q"], qs.tensors["w#scale"]
    assert qs.meta["w"]["bits"] == 6
    assert int(q.min()) >= -31 and int(q.max()) <= 31
    deq = dequantize_state_dict(qs)["w"]
    # no clipping with absmax: error at most half a step (fp16 rounding of s may add one ulp of slack)
    assert ((deq - w).abs() <= s.float()[:, None] * 0.5 * (1 + 2e-3) + 1e-7).all()


def test_sdclip_scale_is_k_std_over_levels():
    torch.manual_seed(2)
    w = torch.randn(32, 512) * 0.02
    k = 12.85
    s = row_scales(w, 6, "sdclip", sdclip_k=k)
    assert torch.equal(s, (k * w.std(dim=1) / 31).half())
    # percentile rule: the same torch.quantile as the baseline
    s2 = row_scales(w, 6, "percentile", percentile=99.0)
    assert torch.equal(s2, (torch.quantile(w.abs(), 0.99, dim=1) / 31).half())


def test_zero_rows_and_per_tensor():
    w = torch.zeros(4, 10)
    q, s = quantize_per_row(w, 6, "sdclip")
    assert (q == 0).all() and (s > 0).all()
    t = torch.randn(70_000)
    q, s = quantize_per_tensor(t, 6, "absmax")
    assert s.ndim == 0 and int(q.abs().max()) == 31


def test_per_role_sdclip_k_and_embed_bits():
    torch.manual_seed(3)
    sd = {"tok_emb.weight": torch.randn(512, 256), "blocks.0.mlp.fc.weight": torch.randn(512, 256)}
    sch = QuantScheme(method="int6", clip="sdclip", sdclip_k=12.0, sdclip_k_by_role={"embedding": 20.0},
                      embed_bits=7)
    qs = quantize_state_dict(sd, sch)
    assert qs.meta["tok_emb.weight"]["bits"] == 7 and qs.meta["tok_emb.weight"]["sdclip_k"] == 20.0
    assert qs.meta["blocks.0.mlp.fc.weight"]["bits"] == 6 and qs.meta["blocks.0.mlp.fc.weight"]["sdclip_k"] == 12.0
    e = sd["tok_emb.weight"]
    assert torch.equal(qs.tensors["tok_emb.weight#scale"], (20.0 * e.std(dim=1) / 63).half())


def test_bad_bits_raise():
    with pytest.raises(GolfError, match="bits"):
        QuantScheme(method="intN", bits=9)
    with pytest.raises(ValueError):
        levels(1)
