"""golf's callbacks: the challenge clock, late QAT, finalization into an artifact, and constraint plug-ins."""

from golf.callbacks.budget import WallClockBudget
from golf.callbacks.constraints import ArtifactSizeCap, Constraint, EvalTimeBudget, ParameterCap
from golf.callbacks.finalize import Finalize
from golf.callbacks.interrupt import SaveOnInterrupt
from golf.callbacks.qat import LateQAT

__all__ = ["WallClockBudget", "Finalize", "LateQAT", "SaveOnInterrupt", "Constraint", "ArtifactSizeCap", "ParameterCap", "EvalTimeBudget"]
