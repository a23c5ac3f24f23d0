"""Custom kernels of golf: one folder per op (`reference.py` in plain PyTorch, Triton variants beside it)."""
