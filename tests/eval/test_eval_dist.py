"""(vii) Two gloo processes give the same BPB as one for every mode, and chunk TTT keeps the ranks in lockstep
(identical weights on both ranks after adapting, equal to the single-process weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from golf.eval import evaluate

NAMES = ["windows", "sliding", "doc_isolated", "stateful", "windows+chunk", "sliding+chunk", "stateful+chunk",
         "doc_isolated+lora"]


def _flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _adapted_weights(model, name):
    """Evaluate with chunk TTT but keep the adapted weights (restore disabled) and return them."""
    from test_eval_modes import BATCH, CONFIGS, L, tiny_luts, tiny_tokens

    from golf.eval import ttt

    restore = ttt.ChunkTrainer.restore
    ttt.ChunkTrainer.restore = lambda self: None
    try:
        evaluate(model, tiny_tokens(), L, tiny_luts(), "cpu", CONFIGS[name], batch_tokens=BATCH)
    finally:
        ttt.ChunkTrainer.restore = restore
    return _flat_params(model)


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    from test_eval_modes import BATCH, CONFIGS, L, tiny_luts, tiny_model, tiny_tokens

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = tiny_model()
        results = {n: evaluate(model, tiny_tokens(), L, tiny_luts(), "cpu", CONFIGS[n], batch_tokens=BATCH).as_dict()
                   for n in NAMES}
        weights = _adapted_weights(model, "windows+chunk")
        gathered = [torch.empty_like(weights) for _ in range(world)]
        dist.all_gather(gathered, weights)
        if rank == 0:
            results["lockstep"] = all(torch.equal(g, gathered[0]) for g in gathered)
            results["weights"] = weights.tolist()
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_same_bpb_as_one(tmp_path):
    from test_eval_modes import BATCH, CONFIGS, L, tiny_luts, tiny_model, tiny_tokens

    out = tmp_path / "two.json"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    two = json.loads(out.read_text())
    assert two["lockstep"], "ranks must hold identical weights after every TTT step"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_model()
        for name in NAMES:
            one = evaluate(model, tiny_tokens(), L, tiny_luts(), "cpu", CONFIGS[name], batch_tokens=BATCH).as_dict()
            assert two[name]["tokens"] == one["tokens"] and two[name]["bytes"] == one["bytes"], name
            rel = 1e-6 if "+" not in name else 1e-5
            assert two[name]["val_bpb"] == pytest.approx(one["val_bpb"], rel=rel), name
            assert two[name]["ttt_chunks"] == one["ttt_chunks"], name  # lora: (document, chunk) pairs adapted
            if "lora" not in name:  # lora steps count batches of documents, which depend on the world size
                assert two[name]["ttt_steps"] == one["ttt_steps"], name
        weights = _adapted_weights(model, "windows+chunk").numpy()
    finally:
        torch.set_num_threads(old)
    np.testing.assert_allclose(np.array(two["weights"]), weights, rtol=1e-4, atol=2e-5)  # float summation order only
