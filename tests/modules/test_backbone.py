from dataclasses import replace

import pytest
import torch

from golf.errors import GolfError
from golf.model import GolfLM
from golf.modules.backbone import Backbone
from golf.modules.config import BackboneConfig, SSMConfig

HYBRID = BackboneConfig(layers="SSASSAS", mlp_mult=3.0, mlp_activation="leaky_relu2", ssm=SSMConfig())


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_baseline_parameter_count_is_exact():
    assert count(Backbone(BackboneConfig(), vocab_size=1024)) == 17_059_912


def test_hybrid_sp8192_matches_the_best_ssm_entry_exactly():
    """PR #1644's model_params: 25,159,984 (ssm.md §2.2 accounting), 2240 in_proj rows."""
    model = Backbone(HYBRID, vocab_size=8192)
    assert count(model) == 25_159_984
    assert model.blocks[0].mixer.in_proj.weight.shape == (2240, 512)
    groups = model.row_groups()["blocks.0.mixer.in_proj.weight"]
    assert [(r, e - s) for r, s, e in groups] == [
        ("z", 1024), ("x", 1024), ("B", 64), ("C", 64), ("dd_dt", 16), ("dd_A", 16), ("trap", 16), ("angles", 16)
    ]
    assert "blocks.2.mixer.in_proj.weight" not in model.row_groups()  # attention block


def test_unknown_mixer_letter_is_a_clear_error():
    with pytest.raises(GolfError, match="unknown mixer.*X.*use A, S"):
        Backbone(BackboneConfig(layers="AXA"), vocab_size=64)


def test_custom_mixer_from_import_path():
    cfg = BackboneConfig(model_dim=32, layers="AM", num_heads=2, num_kv_heads=1, mixers={"M": "toy_mixer.CausalMean"})
    model = Backbone(cfg, vocab_size=64)
    assert type(model.blocks[1].mixer).__name__ == "CausalMean"
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 64)
    with pytest.raises(GolfError, match="mixers.M: cannot import"):
        Backbone(BackboneConfig(layers="M", mixers={"M": "toy_mixer.Nope"}), vocab_size=64)


@pytest.mark.parametrize("layers", ["AAAA", "SASA"])
def test_optimizer_groups_cover_every_parameter_once(layers):
    cfg = BackboneConfig(model_dim=64, layers=layers, num_heads=4, num_kv_heads=2, ssm=SSMConfig(d_state=16, headdim=16))
    lm = GolfLM(vocab_size=128, seq_len=32, backbone=cfg)
    groups = lm.param_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(lm.model.parameters()))
    muon = [p for g in groups if g["use_muon"] for p in g["params"]]
    assert all(p.ndim == 2 for p in muon)
    if "S" in layers:
        dyn = lm.model.blocks[0].mixer
        adam_ids = {id(p) for g in groups if not g["use_muon"] for p in g["params"]}
        assert {id(dyn.dt_bias), id(dyn.B_bias), id(dyn.C_bias), id(dyn.D)} <= adam_ids


def test_ssm_in_proj_can_go_to_adam():
    cfg = BackboneConfig(model_dim=64, layers="SA", num_heads=4, num_kv_heads=2, ssm=SSMConfig(d_state=16, headdim=16))
    from golf.model import OptimizerConfig

    lm = GolfLM(vocab_size=128, seq_len=32, backbone=cfg, optimizer=OptimizerConfig(ssm_in_proj="adam"))
    in_proj = lm.model.blocks[0].mixer.in_proj.weight
    group = next(g for g in lm.param_groups() if any(p is in_proj for p in g["params"]))
    assert not group["use_muon"] and group["lr"] == lm.optim_config.adam_matrix_lr


def test_forward_shapes_and_state_carry_equals_one_pass():
    torch.manual_seed(0)
    cfg = BackboneConfig(model_dim=64, layers="SAS", num_heads=4, num_kv_heads=2, ssm=SSMConfig(d_state=16, headdim=16, chunk_size=8))
    model = Backbone(cfg, vocab_size=97).double()
    for p in model.parameters():  # zero-init projections would make every block the identity
        torch.nn.init.normal_(p, std=0.05)
    idx = torch.randint(0, 97, (2, 21))
    full = model(idx)
    assert full.shape == (2, 21, 97)
    a, states = model(idx[:, :13], return_states=True)
    b, _ = model(idx[:, 13:], states=states, return_states=True)
    torch.testing.assert_close(torch.cat([a, b], dim=1), full, rtol=1e-9, atol=1e-9)


def test_rope_tables_are_cached_buffers_outside_checkpoints_and_ddp_and_match_the_formula():
    from golf.modules.layers import Rotary

    rot = Rotary(16, cached_positions=32)
    want_cos, want_sin = rot._tables(0, 48, torch.device("cpu"))
    for offset, length in ((0, 32), (5, 20), (20, 12), (25, 10), (40, 8)):  # inside, at the end, across, past
        cos, sin = rot(length, torch.device("cpu"), offset=offset)
        assert cos.shape == (1, 1, length, 8)
        torch.testing.assert_close(cos[0, 0], want_cos[offset : offset + length], rtol=0, atol=1e-6)
        torch.testing.assert_close(sin[0, 0], want_sin[offset : offset + length], rtol=0, atol=1e-6)
    lm = GolfLM(backbone=BackboneConfig(layers="ASA"))
    tables = [n for n, _ in lm.named_buffers() if n.endswith(("cos_cached", "sin_cached"))]
    assert len(tables) == 4 and not set(tables) & set(lm.state_dict())
    assert sorted(lm._ddp_params_and_buffers_to_ignore) == sorted(tables)


def test_ddp_does_not_broadcast_the_rope_tables_but_keeps_every_parameter(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        lm = GolfLM(backbone=BackboneConfig(layers="ASA"))
        ddp = torch.nn.parallel.DistributedDataParallel(lm)
        tables = [b for n, b in lm.named_buffers() if n.endswith(("cos_cached", "sin_cached"))]
        assert tables and not any(b is t for b in ddp.modules_buffers for t in tables)
        synced = {id(p) for p in ddp.parameters() if p.requires_grad}
        assert synced == {id(p) for p in lm.parameters()}
    finally:
        dist.destroy_process_group()


def test_token_by_token_kv_cache_grows_in_place_and_branches_do_not_alias():
    from golf.modules.attention import KVCache

    torch.manual_seed(0)
    cfg = BackboneConfig(model_dim=64, layers="SA", num_heads=4, num_kv_heads=2, ssm=SSMConfig(d_state=16, headdim=16, chunk_size=8))
    model = Backbone(cfg, vocab_size=97).double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    idx = torch.randint(0, 97, (2, 40))
    full = model(idx)
    logits, states = model(idx[:, :5], return_states=True)
    steps, buffers = [logits], set()
    for t in range(5, 40):
        logits, states = model(idx[:, t : t + 1], states=states, return_states=True)
        steps.append(logits)
        buffers.add(states[1]._k.data_ptr())
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-9, atol=1e-9)
    assert isinstance(states[1], KVCache) and states[1].length == 40
    assert len(buffers) <= 3  # capacity doubles: 5 -> 16 -> 32 -> 64, not a new buffer per token

    # two continuations of one state whose buffer has room (branches): the first appends in place, the second copies,
    # and each, continued further, equals its own one-pass forward
    _, prefix = model(idx[:, :20], return_states=True)
    _, s21 = model(idx[:, 20:21], states=prefix, return_states=True)  # a grown buffer with free positions
    alt = idx.clone()
    alt[:, 21:] = (idx[:, 21:] + 1) % 97
    a, sa = model(idx[:, 21:22], states=s21, return_states=True)
    b, sb = model(alt[:, 21:22], states=s21, return_states=True)
    assert sa[1]._k.data_ptr() == s21[1]._k.data_ptr() != sb[1]._k.data_ptr()
    full_alt = model(alt)
    torch.testing.assert_close(a, full[:, 21:22], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(b, full_alt[:, 21:22], rtol=1e-9, atol=1e-9)
    a2, _ = model(idx[:, 22:23], states=sa, return_states=True)
    b2, _ = model(alt[:, 22:23], states=sb, return_states=True)
    torch.testing.assert_close(a2, full[:, 22:23], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(b2, full_alt[:, 22:23], rtol=1e-9, atol=1e-9)


def test_baseline_int8_payload_is_the_challenge_baseline_s():
    """parameter-golf.md §3.5: the baseline's int8 payload before zlib is 17,178,912 bytes."""
    from golf.export import quantize_backbone
    from golf.quant import QuantScheme

    qs = quantize_backbone(Backbone(BackboneConfig(), vocab_size=1024), QuantScheme(method="int8"))
    assert qs.payload_bytes == 17_178_912


@pytest.mark.parametrize("regions", [False, True], ids=["whole-model", "regional"])
def test_every_compile_gets_golfs_inductor_options_and_they_are_real_settings(monkeypatch, regions):
    import torch._inductor.config

    from golf.model import INDUCTOR_OPTIONS

    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append(kwargs) or fn)
    cfg = BackboneConfig(model_dim=32, layers="SA", num_heads=2, num_kv_heads=1,
                         ssm=SSMConfig(d_state=16, headdim=16, chunk_size=8))
    GolfLM(vocab_size=97, seq_len=24, backbone=cfg, compile=True, compile_regions=regions).configure_model()
    assert calls and all(kwargs["options"] == INDUCTOR_OPTIONS for kwargs in calls)
    known = torch._inductor.config.get_config_copy()
    assert all(key in known for key in INDUCTOR_OPTIONS), "an Inductor option golf sets does not exist in this torch"
    if "triton.mix_order_reduction" in known:  # the fused per-row + per-channel reduction measured slow on the hybrid
        assert INDUCTOR_OPTIONS == {"triton.mix_order_reduction": False}


def test_compile_options_go_over_golfs_to_every_compile_and_a_typo_is_a_one_line_error(monkeypatch):
    from golf.errors import GolfError
    from golf.model import INDUCTOR_OPTIONS

    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append(kwargs) or fn)
    cfg = BackboneConfig(model_dim=32, layers="SA", num_heads=2, num_kv_heads=1,
                         ssm=SSMConfig(d_state=16, headdim=16, chunk_size=8))
    extra = {"max_autotune_gemm": True, "coordinate_descent_tuning": True}
    lm = GolfLM(vocab_size=97, seq_len=24, backbone=cfg, compile=True, compile_options=extra)
    lm.configure_model()
    assert calls and all(kwargs["options"] == {**INDUCTOR_OPTIONS, **extra} for kwargs in calls)
    assert lm.hparams["compile_options"] == extra
    with pytest.raises(GolfError, match=r"unknown Inductor option\(s\) max_autotune_gem;") as err:
        GolfLM(vocab_size=97, seq_len=24, backbone=cfg, compile=True, compile_options={"max_autotune_gem": True})
    assert "\n" not in str(err.value)


def test_regional_compile_shares_one_graph_per_block_kind_and_matches_eager(monkeypatch):
    import functools

    import torch._dynamo
    from torch._dynamo.utils import counters

    # aot_eager: Dynamo's graphs and guards without Inductor's minutes of C++ compilation on CPU
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    cfg = BackboneConfig(model_dim=64, layers="SSASSAS", num_heads=4, num_kv_heads=2, logit_softcap=30.0,
                         ssm=SSMConfig(d_state=16, headdim=16, chunk_size=8))
    lm = GolfLM(vocab_size=97, seq_len=24, backbone=cfg, compile=True, compile_regions=True)
    for p in lm.parameters():  # zero-init projections would make every block the identity
        torch.nn.init.normal_(p, std=0.05)
    eager = GolfLM(vocab_size=97, seq_len=24, backbone=cfg)
    eager.load_state_dict(lm.state_dict())
    lm.configure_model()
    x, y = torch.randint(0, 97, (2, 24)), torch.randint(0, 97, (2, 24))
    for step in range(2):
        with torch._dynamo.config.patch(error_on_recompile=step > 0):  # the second step reuses every graph
            loss = lm._train_loss(x, y)
        ref = eager.model.loss(x, y)
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
        loss.backward()
        ref.backward()
        for (name, p), q in zip(lm.named_parameters(), eager.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    # seven blocks, two kinds: the first S block (x is x0), the other S blocks, the A blocks, and the head + loss
    assert counters["stats"]["unique_graphs"] == 4, dict(counters["stats"])
    assert not counters["graph_break"]
    with torch.no_grad():
        lm.eval()
        eager.eval()
        torch.testing.assert_close(lm._eval_forward(x), eager.model(x), rtol=1e-5, atol=1e-5)


def test_residual_stream_dtype_under_autocast():
    """residual_dtype=autocast carries x, x0 and the residual adds in the autocast dtype (as the challenge's bf16
    models do); float32 keeps them fp32; without autocast both are the same fp32 model."""
    cfg = BackboneConfig(model_dim=64, layers="SA", num_heads=4, num_kv_heads=2, ssm=SSMConfig(d_state=16, headdim=16))
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    models = {}
    for residual_dtype in ("float32", "autocast"):
        torch.manual_seed(0)
        models[residual_dtype] = model = Backbone(replace(cfg, residual_dtype=residual_dtype), vocab_size=64)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x, _ = model.hidden(idx)
        assert x.dtype == (torch.bfloat16 if residual_dtype == "autocast" else torch.float32)
    torch.testing.assert_close(models["float32"](idx), models["autocast"](idx), rtol=0, atol=0)
    with pytest.raises(GolfError, match="residual_dtype='bf16'.*'float32' or 'autocast'"):
        Backbone(BackboneConfig(residual_dtype="bf16"), vocab_size=64)


@pytest.mark.parametrize("activation", ["relu2", "leaky_relu2"])
def test_fused_mlp_equals_the_module_path_and_gives_way_to_hooks(monkeypatch, activation):
    """``fused_mlp`` runs golf::mlp_act (its PyTorch twin on CPU) with the layers' transformed weights: same output
    and gradients as fc -> activation -> proj; a hook on fc or proj (GPTQ, test-time LoRA) gets the module path."""
    from golf.modules import layers
    from golf.modules.layers import MLP

    fused_calls = []
    op = layers.mlp_act
    monkeypatch.setattr(layers, "mlp_act", lambda *a: fused_calls.append(a[-1]) or op(*a))
    torch.manual_seed(0)
    plain, fused = MLP(16, 3.0, activation), MLP(16, 3.0, activation, fused=True)
    torch.nn.init.normal_(plain.proj.weight, std=0.2)  # zero-initialised, it would hide the rest
    fused.load_state_dict(plain.state_dict())
    for m in (plain, fused):  # a weight transform (LateQAT's hook point) must reach the fused path too
        m.fc.weight_transform = lambda w: 2 * w
    x = torch.randn(2, 5, 16)
    outs = []
    for m in (plain, fused):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.square().sum().backward()
        outs.append((y, xi.grad, m.fc.weight.grad, m.proj.weight.grad))
    assert fused_calls == [fused.negative_slope]
    for ref, got in zip(*outs):
        torch.testing.assert_close(got, ref)
    hooked = []
    handle = fused.fc.register_forward_hook(lambda mod, inputs, out: hooked.append(out.shape))
    torch.testing.assert_close(fused(x), plain(x))
    handle.remove()
    assert hooked == [torch.Size([2, 5, 48])] and len(fused_calls) == 1


def test_fused_mlp_under_bf16_autocast_and_compile_matches_the_module_path():
    cfg = BackboneConfig(model_dim=32, layers="AA", num_heads=2, num_kv_heads=1, mlp_activation="leaky_relu2")
    torch.manual_seed(0)
    plain = Backbone(cfg, vocab_size=64)
    fused = Backbone(replace(cfg, fused_mlp=True), vocab_size=64)
    for block in plain.blocks:  # zero-initialised, proj would hide the MLP
        torch.nn.init.normal_(block.mlp.proj.weight, std=0.1)
    fused.load_state_dict(plain.state_dict())
    assert all(b.mlp.fused for b in fused.blocks) and not any(b.mlp.fused for b in plain.blocks)
    tokens = torch.randint(0, 64, (2, 17))
    losses = []
    for model in (plain, fused):
        loss_fn = torch.compile(model.loss, fullgraph=True, backend="aot_eager")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        losses.append((loss, model.blocks[0].mlp.fc.weight.grad))
    (loss_p, grad_p), (loss_f, grad_f) = losses
    torch.testing.assert_close(loss_f, loss_p, rtol=2e-2, atol=2e-2)
    assert ((grad_f - grad_p).norm() / grad_p.norm()).item() < 5e-2
