"""Evaluation modes the challenge accepts (windows, sliding, doc_isolated, stateful) with optional score-first TTT.
See docs/eval.md."""

from golf.eval.config import MODES, EvalConfig, TTTConfig
from golf.eval.modes import ModeResult, Trace, evaluate

__all__ = ["MODES", "EvalConfig", "ModeResult", "TTTConfig", "Trace", "evaluate"]
