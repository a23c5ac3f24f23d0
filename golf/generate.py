"""Token-by-token sampling with carried mixer states (SSM recurrent state, attention KV cache). Used for
self-generated GPTQ calibration, which the challenge accepts after training (parameter-golf.md §1.1)."""

from __future__ import annotations

import torch

from golf.data.tokenizer import BOS_ID
from golf.evaluate import autocast_for


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    num_seqs: int,
    length: int,
    temperature: float = 0.8,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[num_seqs, length]`` token ids starting with BOS, sampled at ``temperature`` (deterministic for a seed)."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    tokens = torch.full((num_seqs, 1), BOS_ID, dtype=torch.long, device=device)
    out = [tokens]
    with autocast_for(device):
        logits, states = model(tokens, return_states=True)
        for _ in range(length - 1):
            probs = torch.softmax(logits[:, -1].float() / max(temperature, 1e-4), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
            out.append(nxt)
            logits, states = model(nxt, states=states, return_states=True)
    return torch.cat(out, dim=1)
