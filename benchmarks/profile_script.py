"""Run a training script unchanged and profile one of its training steps with torch.profiler (the peers' rows of
train_step.py --profile, so golf's profile has a counterpart measured the same way).

    python benchmarks/profile_script.py --step 12 [--top 25] --out peer_profile.json path/to/train_gpt.py

The script runs as ``__main__`` with its own folder first on ``sys.path``, its environment and working directory as
given. Its training loop is found from the outside: ``--step N`` is the N-th ``step()`` of the first optimizer that
steps, counted after that optimizer's last ``load_state_dict`` (the challenge's scripts compile in warm-up steps and
then restore the optimizer, so counting restarts where their timed loop starts). The window runs from the end of
step N-1 to the end of step N: one whole training step, including the other optimizers' updates of step N-1.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from profiling import StepProfile  # benchmarks/profiling.py, beside this script (sys.path[0] when run)


class StepWindow:
    """Counts the first optimizer's steps since its last load_state_dict and profiles step ``target``."""

    def __init__(self, target: int, out: Path, top: int = 25) -> None:
        self.target, self.out, self.top = target, out, top
        self.first: torch.optim.Optimizer | None = None
        self.count = 0
        self.window: StepProfile | None = None
        load_state_dict = torch.optim.Optimizer.load_state_dict
        window = self

        def counting_load_state_dict(opt, state_dict):  # restarts the count when the script restores its optimizer
            if opt is window.first:
                window.count = 0
            return load_state_dict(opt, state_dict)

        torch.optim.Optimizer.load_state_dict = counting_load_state_dict
        register_optimizer_step_post_hook(self.after_step)

    def after_step(self, opt, args, kwargs) -> None:
        if self.first is None:
            self.first = opt
        if opt is not self.first:
            return
        self.count += 1
        if self.count == self.target - 1:
            self.window = StepProfile(self.top).start()
        elif self.count == self.target and self.window is not None:
            self.out.write_text(json.dumps(self.window.finish(), indent=2) + "\n")
            self.window = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", type=int, required=True, help="training step to profile (1-based, >= 2)")
    ap.add_argument("--top", type=int, default=25, help="kernels listed, by GPU time")
    ap.add_argument("--out", type=Path, required=True, help="JSON summary (top kernels, kernel and wall time)")
    ap.add_argument("script", type=Path)
    args = ap.parse_args()
    if args.step < 2:
        raise SystemExit("--step must be >= 2: the window opens at the end of the step before it")
    if args.top < 1:
        raise SystemExit(f"--top {args.top}: give the number of kernels to list, 1 or more")
    StepWindow(args.step, args.out, args.top)
    script = args.script.resolve()
    sys.argv = [str(script)]
    sys.path[0] = str(script.parent)
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
