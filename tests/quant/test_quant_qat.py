"""Fake quantization: identity gradient, forward equal to the exporter's dequantized weight."""

import pytest
import torch

from golf.quant import QuantScheme, dequantize_state_dict, quantize_state_dict
from golf.quant.intn import dequantize_per_row, quantize_per_row
from golf.quant.int8 import quantize_int8_per_row
from golf.quant.qat import fake_quant_param, fake_quant_weight


@pytest.mark.parametrize("clip", ["percentile", "sdclip", "absmax"])
@pytest.mark.parametrize("bits", [5, 6, 8])
def test_forward_equals_quantizer_when_on(clip, bits):
    torch.manual_seed(0)
    w = torch.randn(40, 96) * 0.03
    out = fake_quant_weight(w, bits, torch.tensor(1.0), clip=clip)
    q, s = quantize_per_row(w, bits, clip)
    assert torch.equal(out, dequantize_per_row(q, s, w.dtype))


def test_forward_matches_baseline_int8_and_bf16():
    torch.manual_seed(1)
    w = torch.randn(40, 96) * 2
    q, s = quantize_int8_per_row(w)
    assert torch.equal(fake_quant_weight(w, 8, 1.0, clip="int8_baseline"), q.float() * s.float()[:, None])
    wb = w.bfloat16()
    q, s = quantize_per_row(wb, 6, "sdclip")
    assert torch.equal(fake_quant_weight(wb, 6, torch.tensor(1.0), clip="sdclip"), dequantize_per_row(q, s, wb.dtype))


def test_off_is_identity_and_gradient_is_straight_through():
    torch.manual_seed(2)
    w = (torch.randn(16, 32) * 0.1).requires_grad_()
    mix = torch.tensor(0.0)
    off = fake_quant_weight(w, 6, mix)
    assert torch.equal(off, w.detach())
    g = torch.randn(16, 32)
    for value in (0.0, 1.0):
        mix.fill_(value)  # flipping the buffer in place: same graph, other result
        w.grad = None
        out = fake_quant_weight(w, 6, mix)
        (out * g).sum().backward()
        assert torch.equal(w.grad, g)
    assert not torch.equal(fake_quant_weight(w, 6, mix).detach(), w.detach())


def test_fake_quant_param_mirrors_the_scheme():
    torch.manual_seed(3)
    scheme = QuantScheme(method="int6", clip="sdclip", sdclip_k_by_role={"mlp": 11.5}, embed_bits=7)
    sd = {"blocks.0.mlp.fc.weight": torch.randn(300, 256) * 0.02, "tok_emb.weight": torch.randn(300, 256) * 0.02,
          "blocks.0.mix_scale": torch.randn(256)}
    deq = dequantize_state_dict(quantize_state_dict(sd, scheme))
    for name, w in sd.items():
        out = fake_quant_param(w, name, scheme, torch.tensor(1.0))
        if name == "blocks.0.mix_scale":
            assert out is w  # kept as float by the exporter
        else:
            assert torch.equal(out, deq[name]), name


def test_round_to_fp16_matches_the_cast():
    from golf.quant.intn import round_to_fp16

    torch.manual_seed(4)
    x = torch.cat([torch.rand(5000) * 0.01, torch.rand(500) * 1e-6, torch.rand(500) * 100,
                   torch.tensor([2.0**-24, 3 * 2.0**-25, 1.0, 0.5 + 2.0**-12, 0.5 + 3 * 2.0**-12, 65504.0])])
    assert torch.equal(round_to_fp16(x), x.half().float())


def test_compiled_fake_quant_is_exact_and_mix_flip_does_not_recompile():
    torch.manual_seed(5)
    w = torch.randn(64, 96) * 0.02
    mix = torch.tensor(0.0)
    f = torch.compile(lambda w, m: fake_quant_weight(w, 6, m, clip="sdclip"), fullgraph=True, dynamic=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert torch.equal(f(w, mix), w)
        mix.fill_(1.0)
        q, s = quantize_per_row(w, 6, "sdclip")
        assert torch.equal(f(w, mix), dequantize_per_row(q, s, w.dtype))


def test_fake_quant_param_mirrors_row_group_export():
    torch.manual_seed(6)
    name = "blocks.1.mixer.in_proj.weight"
    groups = [("z", 0, 200), ("x", 200, 400), ("dd_dt", 400, 408), ("dd_A", 408, 416)]
    scheme = QuantScheme(method="int6", clip="sdclip", protect={"*::dd_A": "fp16", "*::dd_dt": 8})
    w = (torch.randn(416, 192) * 0.02).half().float()
    deq = dequantize_state_dict(quantize_state_dict({name: w}, scheme, row_groups={name: groups}))[name]
    assert torch.equal(fake_quant_param(w, name, scheme, torch.tensor(1.0), groups), deq)
    small = torch.randn(16, 8)  # below passthrough_max_numel: stored as float, never split
    assert fake_quant_param(small, name, scheme, 1.0, [("z", 0, 8), ("dd_A", 8, 16)]) is small


@pytest.mark.parametrize("regions", [False, True], ids=["whole_model", "regional"])
def test_late_qat_with_protect_patterns_compiles_fullgraph_and_flips_without_recompile(regions, monkeypatch):
    """The H100 run that found it: protect globs were matched (fnmatch) inside the compiled forward, which Dynamo
    cannot trace. LateQAT now resolves them before compiling; the compiled loss matches eager in both modes, with the
    whole model compiled or each block on its own (model.compile_regions)."""
    import functools
    from types import SimpleNamespace

    from golf.callbacks import LateQAT
    from golf.model import GolfLM
    from golf.modules.config import BackboneConfig, SSMConfig

    torch.manual_seed(7)
    backbone = BackboneConfig(model_dim=64, layers="SA", num_heads=2, num_kv_heads=1,
                              ssm=SSMConfig(d_state=16, headdim=16, chunk_size=16))
    lm = GolfLM(vocab_size=128, seq_len=32, backbone=backbone, compile=True, compile_regions=regions)
    with torch.no_grad():  # zero-initialised output projections would hide the fake quantization
        for p in lm.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    scheme = QuantScheme(method="int6", clip="sdclip", passthrough_max_numel=1024,
                         protect={"*.in_proj.weight::dd_A": 8, "*.in_proj.weight::dd_dt": "fp16"})
    qat = LateQAT(scheme=scheme)
    qat.on_fit_start(SimpleNamespace(callbacks=[]), lm)
    x = torch.randint(0, 128, (2, 32))
    y = torch.randint(0, 128, (2, 32))
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    lm.configure_model()
    compiled = lm._train_loss
    compiled(x, y)  # the first call compiles (regional: one graph per block kind, each a "recompile" of _run_block)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for mix in (0.0, 1.0):
            qat.mix.fill_(mix)
            qat.refresh_targets()
            torch.testing.assert_close(compiled(x, y), lm.model.loss(x, y), rtol=1e-5, atol=1e-5)
    qat.mix.fill_(0.0)
    off = lm.model.loss(x, y)
    qat.mix.fill_(1.0)
    assert not torch.equal(off, lm.model.loss(x, y))  # fake quantization is really on
    # In value the forward now uses exactly the weights the exporter stores; the gradient is the identity.
    from golf.quant import dequantize_state_dict, quantize_state_dict

    name = "blocks.0.mixer.in_proj.weight"
    w = lm.model.get_parameter(name)
    groups = lm.model.row_groups()
    stored = dequantize_state_dict(quantize_state_dict({name: w.detach()}, scheme, row_groups={name: groups[name]}))
    module = lm.model.get_submodule(name.rsplit(".", 1)[0])
    out = module.weight_transform(w)
    assert torch.equal(out, stored[name].to(out.dtype))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
