"""Host-side helpers shared by golf's Triton launchers: interpreter mode and its NumPy 2 fix, and tl.dot's precision."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """Kernels run under Triton's interpreter (``TRITON_INTERPRET=1``: NumPy on the CPU, no PTX)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreter_compat() -> None:
    """Let runtime loop bounds (``range(NT)``) run under ``TRITON_INTERPRET=1`` with NumPy 2.

    Triton 3.6's interpreter turns a scalar (stored as a 1-element array) into a Python int with ``int(array)``,
    which NumPy 2 rejects for arrays of ndim 1. Only patched in interpreter mode, once, at the first launch.
    """
    if not interpreting():
        return
    from triton.runtime import interpreter

    if getattr(interpreter, "_golf_index_compat", False) or not hasattr(interpreter, "_patch_lang_tensor"):
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    interpreter._golf_index_compat = True


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision: IEEE fp32 when PyTorch's fp32 matmuls are "highest", else tf32 (bf16/fp16
    operands ignore it)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"
