"""golf's callbacks: the challenge clock, late QAT, finalization into an artifact, and constraint plug-ins."""

from golf.callbacks.budget import WallClockBudget

__all__ = ["WallClockBudget"]
