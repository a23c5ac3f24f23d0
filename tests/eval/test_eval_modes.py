"""Mechanical legality checks of every eval mode (parameter-golf.md §1.3, issue #1017's four conditions) on a tiny
random hybrid model on CPU: causality, each target scored exactly once, a normalized distribution over the whole
vocabulary, score-before-update for TTT; plus the equivalences windows == evaluate_bpb and stateful == one pass."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from golf.data.datamodule import ValWindows
from golf.data.tokenizer import BOS_ID, ByteLUTs
from golf.errors import GolfError
from golf.eval import EvalConfig, TTTConfig, evaluate
from golf.eval.modes import truncate_kv
from golf.eval.plan import (
    doc_chunks,
    doc_isolated_plan,
    doc_segments,
    sliding,
    stream_starts,
    usable_targets,
)
from golf.evaluate import evaluate_bpb
from golf.modules.backbone import Backbone
from golf.modules.config import BackboneConfig, SSMConfig
from golf.modules.layers import Rotary, apply_rotary

V, L, N_TOKENS, BATCH = 64, 32, 700, 128
BOS_AT = (0, 90, 200, 260, 500, 505)  # documents of 90, 110, 60, 240, 5 and 195 tokens (some longer than L)


def tiny_model(layers: str = "SAS", dtype=torch.float32) -> Backbone:
    torch.manual_seed(0)
    cfg = BackboneConfig(model_dim=32, layers=layers, num_heads=2, num_kv_heads=1,
                         ssm=SSMConfig(d_state=16, headdim=16, chunk_size=16))
    model = Backbone(cfg, V).to(dtype)
    with torch.no_grad():  # zero-init projections would make every block the identity
        for name, p in model.named_parameters():
            if p.ndim == 2:
                torch.nn.init.normal_(p, std=0.3 if "tok_emb" in name else p.shape[1] ** -0.5)
    return model


def tiny_luts() -> ByteLUTs:
    g = torch.Generator().manual_seed(1)
    base = torch.randint(1, 4, (V,), generator=g).to(torch.int16)
    lead = torch.rand(V, generator=g) < 0.5
    boundary = torch.zeros(V, dtype=torch.bool)
    boundary[:4] = True
    base[:4] = 0
    return ByteLUTs(base, lead, boundary)


def tiny_tokens(seed: int = 0) -> np.ndarray:
    toks = np.random.default_rng(seed).integers(4, V, size=N_TOKENS).astype(np.uint16)
    toks[list(BOS_AT)] = BOS_ID
    return toks


USABLE = usable_targets(N_TOKENS, L)

CHUNK = TTTConfig(kind="chunk", chunk_tokens=96, lr=0.05, epochs=2)
LORA = TTTConfig(kind="lora", chunk_tokens=16, lr=0.05, optimizer="adam", lora_docs=3,
                 lora_targets=["c_q", "c_v", "in_proj", "out_proj", "fc"])
CONFIGS = {
    "windows": EvalConfig(),
    "sliding": EvalConfig(mode="sliding", stride=8),
    "doc_isolated": EvalConfig(mode="doc_isolated", stride=8),
    "stateful": EvalConfig(mode="stateful", overlap=16),
    "windows+chunk": EvalConfig(ttt=CHUNK),
    "sliding+chunk": EvalConfig(mode="sliding", stride=8, ttt=CHUNK),
    "doc_isolated+chunk": EvalConfig(mode="doc_isolated", stride=8, ttt=CHUNK),
    "stateful+chunk": EvalConfig(mode="stateful", overlap=16, ttt=replace(CHUNK, chunk_tokens=256)),
    "doc_isolated+lora": EvalConfig(mode="doc_isolated", stride=8, ttt=LORA),
}
TTT = [k for k in CONFIGS if "+" in k]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def luts():
    return tiny_luts()


def run(model, tokens, name, **kw):
    return evaluate(model, tokens, L, tiny_luts(), "cpu", CONFIGS[name], batch_tokens=BATCH, trace=True, **kw)


@pytest.fixture(scope="module")
def baseline(model):
    """One traced run of every configuration on the unmodified tokens."""
    return {name: run(model, tiny_tokens(), name) for name in CONFIGS}


# -- (ii) every target exactly once, the same target set and bytes in every mode ------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_val_target_is_scored_exactly_once(baseline, luts, name):
    r = baseline[name]
    expected = np.zeros(N_TOKENS, dtype=np.int64)
    expected[1 : USABLE + 1] = 1
    np.testing.assert_array_equal(r.trace.count, expected)
    toks = torch.from_numpy(tiny_tokens().astype(np.int64))
    assert r.tokens == USABLE
    assert r.bytes == int(luts.target_bytes(toks[:USABLE], toks[1 : USABLE + 1]).sum())


# -- (iii) a full normalized distribution -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_scores_come_from_a_normalized_distribution_over_the_whole_vocabulary(baseline, name):
    r = baseline[name]
    assert r.trace.vocab == {V}  # logits over every token id, never a subset
    scored = r.trace.count > 0
    np.testing.assert_allclose(r.trace.prob_sum[scored], 1.0, atol=1e-5)
    assert np.all(r.trace.nll[scored] >= 0)
    # the reported loss is the sum of exactly these per-target NLLs
    assert r.val_loss * r.tokens == pytest.approx(r.trace.nll[scored].sum(), rel=1e-6)


# -- (i) causality --------------------------------------------------------------------------------------------------


def _changed_future(j: int, seed: int, keep_bos: bool) -> np.ndarray:
    toks = tiny_tokens()
    new = np.random.default_rng(seed).integers(4, V, size=N_TOKENS - j).astype(np.uint16)
    if keep_bos:
        new[toks[j:] == BOS_ID] = BOS_ID
    else:  # move the document boundaries too: a document now ends at j, and others start later
        new[np.random.default_rng(seed + 1).random(N_TOKENS - j) < 0.02] = BOS_ID
        new[0] = BOS_ID
    toks[j:] = new
    return toks


@pytest.mark.parametrize("name", list(CONFIGS))
def test_changing_future_tokens_never_changes_an_earlier_score(model, baseline, name):
    """Non-TTT modes: a target's score depends only on tokens before it (even when the future moves document
    boundaries). TTT modes: changing tokens >= j changes no score computed before the first event that scored one
    of them (later scores may change: that is the adaptation, and it only ever follows scoring)."""
    ref = baseline[name].trace
    for j, seed in ((37, 1), (201, 2), (333, 3), (506, 4)):
        for keep_bos in (True, False) if "+" not in name else (True,):
            trace = run(model, _changed_future(j, seed, keep_bos), name).trace
            before = np.arange(1, j)
            if "+" in name:
                first_event = ref.event[j : USABLE + 1].min()
                before = before[ref.event[before] <= first_event]
            np.testing.assert_allclose(trace.nll[before], ref.nll[before], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}: j={j}")


def test_lora_documents_are_independent(model, baseline):
    """Changing one document's tokens (BOS kept) leaves every other document's scores alone: adapters are reset."""
    toks = tiny_tokens()
    toks[100:199] = np.random.default_rng(9).integers(4, V, size=99)  # inside the document [90, 200)
    trace = run(model, toks, "doc_isolated+lora").trace
    ref = baseline["doc_isolated+lora"].trace
    other = np.r_[1:91, 201 : USABLE + 1]
    np.testing.assert_allclose(trace.nll[other], ref.nll[other], rtol=1e-5, atol=1e-6)
    assert not np.allclose(trace.nll[101:200], ref.nll[101:200])


# -- (iv) score before update ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TTT)
def test_no_update_uses_a_token_before_it_is_scored(baseline, name):
    r = baseline[name]
    scored = np.zeros(N_TOKENS, dtype=bool)
    lineage_of = np.full(N_TOKENS, -1)
    last_kind: dict[int, str] = {}
    updates = 0
    for kind, pos, lineage in r.trace.events:
        if kind == "score":
            assert not scored[pos].any()
            scored[pos] = True
            lineage_of[pos] = lineage
        else:
            updates += 1
            # a position an update touches (input or target) is the start of its stream (position 0, or the BOS
            # that opens the document whose own adapter this is), or a target already scored in that stream
            is_start = pos == lineage
            ok = is_start | (scored[pos] & (lineage_of[pos] == lineage) & (pos > lineage))
            assert ok.all(), f"{name}: update uses unscored positions {pos[~ok][:10]}"
        for lin in np.unique(lineage):
            last_kind[int(lin)] = kind
    assert updates > 0 and r.ttt_steps > 0
    assert set(last_kind.values()) == {"score"}, "the last chunk (of the stream / of each document) is never trained on"


@pytest.mark.parametrize("name", TTT)
def test_ttt_changes_the_score_restores_the_weights_and_respects_the_time_budget(model, baseline, name):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = baseline[name.split("+")[0]]
    assert baseline[name].val_bpb != plain.val_bpb
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())
    cfg = replace(CONFIGS[name], time_budget_seconds=0.0)
    r = evaluate(model, tiny_tokens(), L, tiny_luts(), "cpu", cfg, batch_tokens=BATCH)
    assert r.ttt_stopped_early and r.ttt_steps == 0
    if name.endswith("lora"):  # a document's chunks are scored like doc_isolated with stride = chunk_tokens
        plain = evaluate(model, tiny_tokens(), L, tiny_luts(), "cpu", replace(cfg, ttt=TTTConfig(), stride=16),
                         batch_tokens=BATCH)
    assert r.val_bpb == pytest.approx(plain.val_bpb, rel=1e-6)


def test_ttt_refuses_inference_mode(model):
    with torch.inference_mode(), pytest.raises(GolfError, match="inference_mode"):
        evaluate(model, tiny_tokens(), L, tiny_luts(), "cpu", CONFIGS["windows+chunk"], batch_tokens=BATCH)


# -- (v) windows is the baseline ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_tokens", [64, 96, 1024])
def test_windows_equals_evaluate_bpb_exactly(model, luts, batch_tokens):
    toks = tiny_tokens()
    ref = evaluate_bpb(model, ValWindows(toks, L, max(1, batch_tokens // L), 0, 1), luts, torch.device("cpu"))
    got = evaluate(model, toks, L, luts, "cpu", EvalConfig(), batch_tokens=batch_tokens)
    assert (got.val_loss, got.val_bpb, got.tokens, got.bytes) == (ref.val_loss, ref.val_bpb, ref.tokens, ref.bytes)


def test_sliding_with_stride_seq_len_and_doc_isolated_without_bos_are_windows(model, luts):
    toks = tiny_tokens()
    ref = evaluate(model, toks, L, luts, "cpu", EvalConfig(), batch_tokens=BATCH)
    got = evaluate(model, toks, L, luts, "cpu", EvalConfig(mode="sliding", stride=L), batch_tokens=BATCH)
    assert got.val_loss == pytest.approx(ref.val_loss, rel=1e-6)
    no_bos = toks.copy()
    no_bos[no_bos == BOS_ID] = 5
    a = evaluate(model, no_bos, L, luts, "cpu", EvalConfig(mode="sliding", stride=8), batch_tokens=BATCH)
    b = evaluate(model, no_bos, L, luts, "cpu", EvalConfig(mode="doc_isolated", stride=8), batch_tokens=BATCH)
    assert b.val_loss == pytest.approx(a.val_loss, rel=1e-6)


# -- (vi) stateful carries the state exactly ------------------------------------------------------------------------


def _one_pass_nll(model, toks: np.ndarray, lo: int, hi: int) -> np.ndarray:
    x = torch.from_numpy(toks[lo : hi + 1].astype(np.int64))[None]
    with torch.no_grad():
        logits = model(x[:, :-1]).float()
    return torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="none").double().numpy()


@pytest.mark.parametrize("layers,overlap", [("SS", 0), ("SAS", 10**6)])
def test_stateful_equals_one_long_pass_over_each_sub_stream(layers, overlap):
    """Pure SSM: carrying the state across windows is one pass. Hybrid with an unbounded KV cache: likewise."""
    model = tiny_model(layers, torch.float64)
    toks = tiny_tokens()
    r = evaluate(model, toks, L, tiny_luts(), "cpu", EvalConfig(mode="stateful", overlap=overlap),
                 batch_tokens=BATCH, trace=True)
    starts = stream_starts(toks, USABLE, BATCH // L)
    assert len(starts) == BATCH // L and set(starts[1:]) <= set(BOS_AT)  # sub-streams snap to documents
    for lo, hi in zip(starts, np.append(starts[1:], USABLE)):
        np.testing.assert_allclose(r.trace.nll[lo + 1 : hi + 1], _one_pass_nll(model, toks, lo, hi),
                                   rtol=1e-6, atol=1e-7)


def test_stateful_overlap_limits_what_attention_sees(model):
    """A truncated KV cache is not the same as the full one, and overlap 0 differs from both."""
    toks = tiny_tokens()
    runs = [evaluate(model, toks, L, tiny_luts(), "cpu", EvalConfig(mode="stateful", overlap=o), batch_tokens=BATCH)
            for o in (0, 16, 10**6)]
    assert len({r.val_loss for r in runs}) == 3


def test_truncated_kv_cache_is_re_rotated_to_its_new_positions():
    rot = Rotary(8)
    raw = torch.randn(2, 1, 12, 8)
    cos, sin = rot(12, "cpu")
    k, v = truncate_kv(apply_rotary(raw, cos, sin), raw, 5, rot)
    cos0, sin0 = rot(5, "cpu")
    torch.testing.assert_close(k, apply_rotary(raw[:, :, 7:], cos0, sin0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, raw[:, :, 7:])
    assert truncate_kv(k, v, 0, rot) is None


# -- the plans ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 31, 32, 33, 95, 96, 97, 200])
@pytest.mark.parametrize("stride", [1, 7, 16, 32])
def test_sliding_plan_scores_every_target_once_with_the_most_context(total, stride):
    w = sliding(0, total, L, stride)
    count = np.zeros(total + 1, dtype=int)
    for a, e, k in zip(w.a, w.e, w.k):
        assert 0 < e - a <= L and 0 < k <= e - a
        count[e - k + 1 : e + 1] += 1
        if a > 0:  # later windows: each scored target sees at least seq_len - stride tokens
            assert (e - k + 1) - a >= L - stride
    np.testing.assert_array_equal(count[1:], 1)
    # the challenge's start condition: ws + seq_len - stride < total
    assert len(w) == sum(1 for ws in range(0, total, stride) if ws == 0 or ws + L - stride < total)


def test_doc_isolated_context_never_crosses_a_document_boundary():
    toks = tiny_tokens()
    plan = doc_isolated_plan(toks, USABLE, L, 8)
    lo, hi = doc_segments(toks, USABLE)
    assert list(lo) == [b for b in BOS_AT if b < USABLE]
    for a, e in zip(plan.a, plan.e):
        assert BOS_ID not in toks[a + 1 : e]  # inputs after the window's first token hold no document start
        assert toks[a] == BOS_ID or BOS_ID not in toks[: a + 1][-1:]
    # the BOS opening a document is the last target of the previous one, predicted from that document alone
    for b in BOS_AT[1:]:
        w = np.flatnonzero((plan.e == b))
        assert len(w) == 1 and plan.a[w[0]] >= max(x for x in BOS_AT if x < b)
    for a, b in zip(lo, hi):
        c = doc_chunks(int(a), int(b), L, 16)
        assert np.all(c.e - c.a <= L) and c.k.sum() == b - a and np.all(c.a >= a)


def test_config_errors_are_clear(model):
    toks = tiny_tokens()
    with pytest.raises(GolfError, match="eval.mode"):
        evaluate(model, toks, L, tiny_luts(), "cpu", EvalConfig(mode="slide"))
    with pytest.raises(GolfError, match="stride"):
        evaluate(model, toks, L, tiny_luts(), "cpu", EvalConfig(mode="sliding", stride=L + 1))
    with pytest.raises(GolfError, match="doc_isolated"):
        evaluate(model, toks, L, tiny_luts(), "cpu", EvalConfig(ttt=TTTConfig(kind="lora")))
    with pytest.raises(GolfError, match="selects no parameter"):
        evaluate(model, toks, L, tiny_luts(), "cpu", EvalConfig(ttt=TTTConfig(kind="chunk", params="nothing_here")))
