"""The baseline int8_clean_per_row_v1 rules, on crafted tensors."""

import torch

from golf.quant import QuantScheme, dequantize_state_dict, quantize_state_dict
from golf.quant.int8 import INT8_CLIP_Q, quantize_int8_per_row, quantize_state_dict_int8

N = 40_000  # row length: 2 rows > 65,536 elements, so the matrix is quantized


def _expected_quantile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolation quantile (torch.quantile's default), computed independently in float64."""
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def test_clip_value_is_the_row_percentile_and_outliers_are_clipped():
    row = torch.ones(N)
    row[7] = 1000.0  # one outlier: the 99.99984th percentile interpolates between 1 and 1000
    w = torch.stack([row, -row])
    q, s = quantize_int8_per_row(w)
    clip = _expected_quantile(sorted([1.0] * (N - 1) + [1000.0]), INT8_CLIP_Q)
    assert 900 < clip < 1000
    assert s.dtype == torch.float16 and s.shape == (2,)
    # torch.quantile works in fp32 (q = 0.9999984 rounded to fp32 moves the interpolation point slightly),
    # so the independent float64 value agrees to ~0.2%; the exact value is torch.quantile's, as in the baseline.
    assert abs(float(s[0]) * 127 - clip) / clip < 3e-3
    assert s[0] == (torch.quantile(row.abs(), INT8_CLIP_Q) / 127.0).half()
    assert s[1] == s[0]
    assert q[0, 7] == 127 and q[1, 7] == -127  # clipped to ±c, then 127
    assert (q[0, :7] == 0).all()  # round(1 / (c/127)) = round(0.136) = 0
    deq = dequantize_state_dict(quantize_state_dict({"w": w}))["w"]
    assert deq[0, 7] < 1000.0


def test_rounding_is_half_to_even_and_range_is_pm127():
    row = torch.zeros(N)
    row[:8] = torch.tensor([2.5, 3.5, -2.5, 0.49, 126.6, -127.0, 127.0, 127.0])
    row[8:16] = 127.0  # several maxima: the percentile is exactly 127, so the scale is exactly 1.0
    big = torch.randn(N) * 50
    big[0] = 1e6
    w = torch.stack([row, big])
    q, s = quantize_int8_per_row(w)
    assert float(s[0]) == 1.0
    assert q[0, :8].tolist() == [2, 4, -2, 0, 127, -127, 127, 127]
    assert q.dtype == torch.int8 and int(q.min()) >= -127 and int(q.max()) <= 127


def test_small_rows_hit_the_baseline_scale_floor():
    w = torch.linspace(-0.5, 0.5, 2 * N).reshape(2, N)
    w[:, :8], w[:, -8:] = -0.5, 0.5  # several maxima: the percentile is 0.5, nothing is clipped
    q, s = quantize_int8_per_row(w)
    # c/127 < 1/127 for |w| <= 0.5, so both rows use the floor 1/127 (stored fp16)
    assert torch.equal(s, torch.full((2,), 1.0 / 127.0).half())
    assert torch.equal(q, torch.round(w / torch.tensor(1.0 / 127.0)).to(torch.int8))


def test_passthrough_rules_and_dtype_restoration():
    sd = {
        "blocks.0.mix_scale": torch.randn(64),
        "blocks.0.mlp_scale": torch.randn(64),
        "blocks.0.resid_mix": torch.randn(2, 64),
        "blocks.0.mixer.q_gain": torch.randn(8),
        "skip_weights": torch.randn(4, 64),
        "blocks.0.attn_scale": torch.randn(64).bfloat16(),  # control, bf16
        "blocks.0.mixer.dt_bias": torch.randn(16),  # small fp32 -> fp16
        "small_bf16": torch.randn(100).bfloat16(),  # small bf16 -> fp16
        "small_fp16": torch.randn(100).half(),  # kept fp16
        "exactly_max": torch.randn(256, 256),  # 65,536 elements: passthrough (fp16)
        "one_more": torch.randn(65_537),  # quantized per tensor
        "tensor3d": torch.randn(4, 128, 200) * 3,  # > 65,536, not 2-D: per tensor
        "mat_bf16": torch.randn(300, 256).bfloat16(),  # per-row, restored to bf16
        "mat_fp16": torch.randn(300, 256).half(),
        "counts": torch.arange(100_000),  # non-float: unchanged
        "flags": torch.ones(3, dtype=torch.bool),
    }
    qs = quantize_state_dict(sd, QuantScheme(method="int8"))
    m = qs.meta
    for name in ("blocks.0.mix_scale", "blocks.0.mlp_scale", "blocks.0.resid_mix", "blocks.0.mixer.q_gain",
                 "skip_weights", "blocks.0.attn_scale"):
        assert m[name]["kind"] == "stored" and m[name]["store_dtype"] == "float32", name
        assert m[name]["reason"] == "control"
    for name in ("blocks.0.mixer.dt_bias", "small_bf16", "exactly_max"):
        assert m[name]["store_dtype"] == "float16", name
    assert m["small_fp16"]["store_dtype"] == "float16"
    assert m["one_more"]["kind"] == "int_per_tensor" and m["tensor3d"]["kind"] == "int_per_tensor"
    assert m["mat_bf16"]["kind"] == "int_per_row" and m["mat_fp16"]["kind"] == "int_per_row"
    assert m["counts"]["kind"] == "stored" and m["counts"]["store_dtype"] == "int64"
    # per-tensor scale: 0-d fp32 = percentile / 127
    s = qs.tensors["tensor3d#scale"]
    assert s.dtype == torch.float32 and s.ndim == 0
    expect = torch.quantile(sd["tensor3d"].abs().flatten(), INT8_CLIP_Q) / 127.0
    assert torch.allclose(s, expect)
    assert qs.tensors["mat_bf16#scale"].dtype == torch.float16

    out = dequantize_state_dict(qs)
    assert list(out) == list(sd)
    for name, t in sd.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
    assert torch.equal(out["blocks.0.mix_scale"], sd["blocks.0.mix_scale"])  # fp32 exact
    assert torch.equal(out["blocks.0.attn_scale"], sd["blocks.0.attn_scale"])  # bf16 -> fp32 -> bf16 exact
    assert torch.equal(out["blocks.0.mixer.dt_bias"], sd["blocks.0.mixer.dt_bias"].half().float())
    assert torch.equal(out["small_bf16"], sd["small_bf16"].half().bfloat16())
    assert torch.equal(out["counts"], sd["counts"]) and torch.equal(out["flags"], sd["flags"])
    rel = (out["mat_fp16"].float() - sd["mat_fp16"].float()).norm() / sd["mat_fp16"].float().norm()
    assert rel < 0.02


def test_control_patterns_are_configurable():
    sd = {"blocks.0.my_gate": torch.randn(32), "blocks.0.mix_scale": torch.randn(32)}
    qs = quantize_state_dict_int8(sd, control_patterns=("my_gate",))
    assert qs.meta["blocks.0.my_gate"]["store_dtype"] == "float32"
    assert qs.meta["blocks.0.mix_scale"]["store_dtype"] == "float16"


def test_dequantize_multiplies_by_the_fp16_scale():
    w = torch.randn(300, 256) * 3
    qs = quantize_state_dict({"w": w})
    q, s = qs.tensors["w#q"], qs.tensors["w#scale"]
    assert torch.equal(dequantize_state_dict(qs)["w"], q.float() * s.float()[:, None])
