"""Row groups, protection, aliases, scheme validation and serialisation, tensor roles."""

import json

import pytest
import torch
from safetensors.torch import load, save

from golf.errors import GolfError
from golf.quant import QuantizedState, QuantScheme, dequantize_state_dict, quantize_state_dict, tensor_role

D = 64
GROUPS = [("z", 0, 256), ("x", 256, 512), ("B", 512, 544), ("C", 544, 576), ("dd_dt", 576, 584),
          ("dd_A", 584, 592), ("trap", 592, 600), ("angles", 600, 608)]
IN_PROJ = "blocks.1.mixer.in_proj.weight"


def _ssm_sd(seed=0):
    torch.manual_seed(seed)
    w = torch.randn(608, 200) * 0.05
    w = w.half().float()  # exactly representable in fp16, so fp16-protected rows round-trip exactly
    return {IN_PROJ: w, "blocks.1.mixer.out_proj.weight": torch.randn(D, 2000) * 0.02}


def test_row_group_split_merge_is_lossless_for_protected_groups():
    sd = _ssm_sd()
    scheme = QuantScheme(method="int6", clip="sdclip", protect={"*.in_proj.weight::dd_A": "fp16",
                                                                 "*.in_proj.weight::dd_dt": "fp32"})
    qs = quantize_state_dict(sd, scheme, row_groups={IN_PROJ: GROUPS})
    m = qs.meta[IN_PROJ]
    assert m["kind"] == "split" and m["pieces"] == [f"{IN_PROJ}::{g}" for g, _, _ in GROUPS]
    assert qs.meta[f"{IN_PROJ}::dd_A"]["store_dtype"] == "float16"
    assert qs.meta[f"{IN_PROJ}::dd_dt"]["store_dtype"] == "float32"
    assert qs.meta[f"{IN_PROJ}::z"]["bits"] == 6 and qs.meta[f"{IN_PROJ}::z"]["kind"] == "int_per_row"
    assert qs.meta[f"{IN_PROJ}::dd_A"]["role"] == "ssm_in_proj:dd_A"
    out = dequantize_state_dict(qs)
    w = sd[IN_PROJ]
    assert out[IN_PROJ].shape == w.shape and out[IN_PROJ].dtype == w.dtype
    assert torch.equal(out[IN_PROJ][576:592], w[576:592])  # dd_dt + dd_A exact
    # other rows quantized exactly as an unsplit int6 matrix would be (per-row quantization is row-separable)
    whole = dequantize_state_dict(quantize_state_dict({IN_PROJ: w}, scheme))[IN_PROJ]
    assert torch.equal(out[IN_PROJ][:576], whole[:576]) and torch.equal(out[IN_PROJ][592:], whole[592:])


def test_default_ssm_protection_keeps_dynamics_rows_int8():
    sd = _ssm_sd()
    qs = quantize_state_dict(sd, QuantScheme(method="int6"), row_groups={IN_PROJ: GROUPS})
    bits = {qs.meta[p]["group"]: qs.meta[p]["bits"] for p in qs.meta[IN_PROJ]["pieces"]}
    assert bits == {"z": 6, "x": 6, "B": 6, "C": 6, "dd_dt": 8, "dd_A": 8, "trap": 6, "angles": 6}
    assert qs.meta[f"{IN_PROJ}::dd_A"]["reason"] == "protected"
    assert int(qs.tensors[f"{IN_PROJ}::dd_A#q"].abs().max()) > 31


def test_int8_baseline_unchanged_by_row_groups():
    sd = _ssm_sd()
    a = dequantize_state_dict(quantize_state_dict(sd, QuantScheme(method="int8")))
    b = dequantize_state_dict(quantize_state_dict(sd, QuantScheme(method="int8"), row_groups={IN_PROJ: GROUPS}))
    assert torch.equal(a[IN_PROJ], b[IN_PROJ])


def test_small_params_are_not_split():
    w = torch.randn(32, 16)
    qs = quantize_state_dict({"blocks.0.mixer.in_proj.weight": w}, QuantScheme(method="int6"),
                             row_groups={"blocks.0.mixer.in_proj.weight": [("z", 0, 16), ("dd_A", 16, 32)]})
    assert qs.meta["blocks.0.mixer.in_proj.weight"]["kind"] == "stored"


@pytest.mark.parametrize("groups", [
    [("z", 0, 300), ("x", 301, 608)],  # gap
    [("z", 0, 300), ("x", 299, 608)],  # overlap
    [("z", 0, 300)],  # short
    [("z", 0, 300), ("z", 300, 608)],  # repeated name
    [("z", 0)],  # malformed
])
def test_bad_row_groups_raise(groups):
    with pytest.raises(GolfError, match="row groups"):
        quantize_state_dict(_ssm_sd(), QuantScheme(method="int6"), row_groups={IN_PROJ: groups})


def test_tied_tensors_stored_once_and_no_shared_storage():
    emb = torch.randn(1000, 80)
    big = torch.randn(400, 400)
    sd = {"tok_emb.weight": emb, "lm_head.weight": emb, "a": big[:200], "b": big[200:]}  # views of one storage
    qs = quantize_state_dict(sd, QuantScheme(method="none"))
    assert qs.meta["lm_head.weight"] == {**qs.meta["lm_head.weight"], "kind": "alias", "of": "tok_emb.weight"}
    assert "lm_head.weight" not in qs.tensors
    blob = save(qs.tensors)  # safetensors refuses shared storage; this must not raise
    out = dequantize_state_dict(QuantizedState.from_header(qs.to_header(), load(blob)))
    assert out["lm_head.weight"] is out["tok_emb.weight"]
    assert torch.equal(out["a"], big[:200]) and torch.equal(out["b"], big[200:])


def test_scheme_validation_and_json_round_trip():
    with pytest.raises(GolfError, match="method"):
        QuantScheme(method="int4")
    with pytest.raises(GolfError, match="clip"):
        QuantScheme(method="intN", clip="minmax")
    with pytest.raises(GolfError, match="protect"):
        QuantScheme(protect={"*": "fp8"})
    assert QuantScheme(method="int6", bits=8).bits == 6
    s = QuantScheme(method="gptq", bits=5, clip="sdclip", sdclip_k_by_role={"mlp": 11.5}, embed_bits=7,
                    protect={"*::dd_A": "fp16"})
    d = json.loads(json.dumps(s.to_dict()))
    assert QuantScheme.from_dict(d) == s
    with pytest.raises(GolfError, match="unknown field"):
        QuantScheme.from_dict({"method": "int8", "bitz": 3})
    qs = quantize_state_dict(_ssm_sd(), s, row_groups={IN_PROJ: GROUPS})
    json.dumps(qs.to_header())  # metadata is JSON-able


def test_reserved_names_and_non_tensors_raise():
    with pytest.raises(GolfError, match="reserves"):
        quantize_state_dict({"a::b": torch.zeros(2)})
    with pytest.raises(GolfError, match="not a tensor"):
        quantize_state_dict({"a": [1, 2]})


@pytest.mark.parametrize("name,role", [
    ("tok_emb.weight", "embedding"),
    ("blocks.0.mixer.c_q.weight", "attn_qkv"),
    ("blocks.0.mixer.c_k.weight", "attn_qkv"),
    ("blocks.0.mixer.c_v.weight", "attn_qkv"),
    ("blocks.0.mixer.proj.weight", "attn_out"),
    ("blocks.0.mixer.q_gain", "control"),
    ("blocks.1.mixer.in_proj.weight", "ssm_in_proj"),
    ("blocks.1.mixer.in_proj.weight::dd_A", "ssm_in_proj:dd_A"),
    ("blocks.1.mixer.in_proj.weight::z", "ssm_in_proj:z"),
    ("blocks.1.mixer.out_proj.weight", "ssm_out_proj"),
    ("blocks.1.mixer.dt_bias", "ssm_dynamics"),
    ("blocks.1.mixer.B_bias", "ssm_dynamics"),
    ("blocks.1.mixer.C_norm_weight", "ssm_dynamics"),
    ("blocks.1.mixer.D", "ssm_dynamics"),
    ("blocks.2.mlp.fc.weight", "mlp"),
    ("blocks.2.mlp.proj.weight", "mlp"),
    ("blocks.2.mix_scale", "control"),
    ("blocks.2.mlp_scale", "control"),
    ("blocks.2.resid_mix", "control"),
    ("skip_weights", "control"),
    ("final_norm.weight", "other"),
])
def test_tensor_role(name, role):
    assert tensor_role(name) == role
