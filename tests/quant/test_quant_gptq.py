"""GPTQ beats round-to-nearest on correlated inputs; the Hessian collector sums xᵀx correctly."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from golf.quant import HessianCollector, QuantScheme, dequantize_state_dict, quantize_state_dict
from golf.quant.gptq import gptq_quantize, rtn_quantize
from golf.quant.intn import row_scales


def _correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g)
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -2, d)[None, :]  # decaying spectrum
    return z @ mix.T + 0.3 * torch.randn(n, 1, generator=g)  # plus a shared component


def _out_err(X, W, Wq):
    return float((X @ W.T - X @ Wq.T).norm())


@pytest.mark.parametrize("bits", [4, 6])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn(bits, act_order):
    torch.manual_seed(0)
    rows, cols = 48, 96
    X = _correlated_inputs(2048, cols)
    W = torch.randn(rows, cols) * 0.05
    H = X.T @ X
    s = row_scales(W, bits, "absmax")
    q_gptq = gptq_quantize(W, H, s, bits, act_order=act_order, block_size=32)
    q_rtn = rtn_quantize(W, s, bits)
    lv = 2 ** (bits - 1) - 1
    assert q_gptq.dtype == torch.int8 and int(q_gptq.abs().max()) <= lv
    err_g = _out_err(X, W, q_gptq.float() * s.float()[:, None])
    err_r = _out_err(X, W, q_rtn.float() * s.float()[:, None])
    assert err_g < 0.8 * err_r, (err_g, err_r)


def test_gptq_is_row_separable_and_handles_dead_columns():
    torch.manual_seed(1)
    X = _correlated_inputs(512, 32)
    X[:, 5] = 0.0  # a dead input
    W = torch.randn(20, 32)
    H = X.T @ X
    s = row_scales(W, 6, "absmax")
    q = gptq_quantize(W, H, s, 6)
    q_top = gptq_quantize(W[:7], H, s[:7], 6)
    assert torch.equal(q[:7], q_top)  # rows are independent given H: row groups see the same codes
    assert (q[:, 5] == 0).all()
    assert gptq_quantize(W, torch.zeros(32, 32), s, 6) is None  # unusable Hessian -> caller falls back to RTN


@pytest.mark.gpu
def test_gptq_on_the_gpu_matches_the_cpu_and_returns_cpu_codes():
    # quantize_state_dict runs GPTQ where the Hessian lives; codes must match the CPU path up to rare rounding ties
    torch.manual_seed(4)
    X = _correlated_inputs(4096, 512)
    W = torch.randn(1536, 512) * 0.02
    H = X.T @ X
    s = row_scales(W, 6, "sdclip", sdclip_k=12.85)
    q_cpu = gptq_quantize(W, H, s, 6)
    q_gpu = gptq_quantize(W.cuda(), H.cuda(), s, 6)
    assert q_gpu.is_cuda and (q_gpu.cpu() == q_cpu).float().mean() > 0.999
    scheme = QuantScheme(method="gptq", bits=6, passthrough_max_numel=0)
    on_cpu = quantize_state_dict({"w": W}, scheme, hessians={"w": H})
    on_gpu = quantize_state_dict({"w": W.cuda()}, scheme, hessians={"w": H.cuda()})
    assert on_gpu.meta["w"]["algo"] == "gptq" and all(not t.is_cuda for t in on_gpu.tensors.values())
    assert (on_gpu.tensors["w#q"] == on_cpu.tensors["w#q"]).float().mean() > 0.999
    torch.testing.assert_close(on_gpu.tensors["w#scale"], on_cpu.tensors["w#scale"])


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 300, bias=False)
        self.proj = nn.Linear(300, 16, bias=False)
        self.gate = nn.Parameter(torch.ones(16))

    def forward(self, idx):
        x = self.emb(idx)
        return self.proj(F.relu(self.fc(x))) * self.gate


def test_hessian_collector_matches_manual_xtx():
    torch.manual_seed(2)
    model = _Block()
    batches = [torch.randint(0, 50, (3, 7)) for _ in range(2)]
    with HessianCollector(model, dtype=torch.float64) as hc:
        with torch.no_grad():
            for b in batches:
                model(b)
    assert set(hc.hessians) == {"fc.weight", "proj.weight"}  # the embedding is skipped
    x_fc = torch.cat([model.emb(b).reshape(-1, 16) for b in batches]).double().detach()
    torch.testing.assert_close(hc.hessians["fc.weight"], x_fc.T @ x_fc)
    assert hc.counts["fc.weight"] == 42 and hc.counts["proj.weight"] == 42
    assert not model.fc._forward_hooks and not model.proj._forward_hooks  # hooks removed
    with HessianCollector(model, names=["pro*"]) as hc2:
        model(batches[0])
    assert set(hc2.hessians) == {"proj.weight"}


def test_hessian_collector_sums_across_ranks(monkeypatch):
    import torch.distributed as dist

    model = _Block()
    batch = torch.randint(0, 50, (2, 5))
    with HessianCollector(model, names=["fc"]) as single:
        model(batch)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: t.mul_(2))  # two ranks that saw the same batch
    with HessianCollector(model, names=["fc"]) as hc:
        model(batch)
    assert hc.counts["fc.weight"] == 2 * single.counts["fc.weight"] == 20
    torch.testing.assert_close(hc.hessians["fc.weight"], 2 * single.hessians["fc.weight"])


def test_gptq_scheme_end_to_end_with_collected_hessians():
    torch.manual_seed(3)
    model = _Block()
    calib = [torch.randint(0, 50, (8, 16)) for _ in range(4)]
    with HessianCollector(model) as hc, torch.no_grad():
        for b in calib:
            model(b)
    sd = model.state_dict()
    qs_g = quantize_state_dict(sd, QuantScheme(method="gptq", bits=4, clip="absmax", passthrough_max_numel=500),
                               hessians=hc.hessians)
    qs_r = quantize_state_dict(sd, QuantScheme(method="intN", bits=4, clip="absmax", passthrough_max_numel=500))
    assert qs_g.meta["fc.weight"]["algo"] == "gptq" and qs_r.meta["fc.weight"]["algo"] == "rtn"
    assert qs_g.meta["emb.weight"]["algo"] == "rtn"  # no Hessian: round-to-nearest
    assert qs_g.stats["num_gptq"] == 2 and qs_r.stats["num_gptq"] == 0
    test = torch.randint(0, 50, (8, 16))
    with torch.no_grad():
        ref = model(test)
        errs = []
        for qs in (qs_g, qs_r):
            model2 = _Block()
            model2.load_state_dict(dequantize_state_dict(qs))
            errs.append(float((model2(test) - ref).norm()))
    assert errs[0] < errs[1]
