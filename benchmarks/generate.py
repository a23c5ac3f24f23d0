"""Token-by-token sampling speed (``golf.generate.sample``, the path of self-generated GPTQ calibration): ms per token
at growing lengths, so that the cost of the carried states (SSM state, attention KV cache) shows as the length grows.

    python benchmarks/generate.py [--layers AA] [--seqs 16] [--lengths 512 2048] [--device cpu|cuda]

A randomly initialised model (the cost does not depend on the weights); the checksum of the sampled tokens lets two
commits be compared for identical output.
"""

from __future__ import annotations

import argparse
import time

import torch

from golf.generate import sample
from golf.modules.backbone import Backbone
from golf.modules.config import BackboneConfig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="AA")
    ap.add_argument("--model-dim", type=int, default=128)
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = BackboneConfig(model_dim=args.model_dim, layers=args.layers, num_heads=4, num_kv_heads=2, mlp_mult=1.0)
    model = Backbone(cfg, vocab_size=256).to(args.device).eval()
    print(f"device {args.device}, layers {args.layers}, d {args.model_dim}, {args.seqs} sequences, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'length':>8} {'seconds':>9} {'ms/token':>9} {'checksum':>12}")
    for length in args.lengths:
        t0 = time.perf_counter()
        out = sample(model, args.seqs, length, seed=0, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(f"{length:>8} {dt:>9.2f} {dt / length * 1e3:>9.2f} {int(out.sum()):>12}")


if __name__ == "__main__":
    main()
