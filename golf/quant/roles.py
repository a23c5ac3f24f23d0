"""Map a state-dict tensor name to the role it plays in the model (for reports and per-role quantization)."""

from __future__ import annotations

import fnmatch

ROLES = (
    "embedding",
    "attn_qkv",
    "attn_out",
    "mlp",
    "ssm_in_proj",
    "ssm_out_proj",
    "ssm_dynamics",
    "control",
    "other",
)

#: Name fragments of the per-block control vectors (the challenge baseline's CONTROL_TENSOR_NAME_PATTERNS, plus golf's
#: ``mix_scale``). Matched as substrings, as the baseline does.
CONTROL_PATTERNS: tuple[str, ...] = ("attn_scale", "mix_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight")

# Leaf names of SSM dynamics parameters (decay, step size, biases and norms of B/C, skip D).
_SSM_DYNAMICS_LEAVES = frozenset(
    {"dt_bias", "B_bias", "C_bias", "B_norm_weight", "C_norm_weight", "D", "A_log", "A", "dt", "B_norm", "C_norm"}
)
_ATTN_QKV_MODULES = frozenset({"c_q", "c_k", "c_v", "c_qkv", "qkv", "q_proj", "k_proj", "v_proj"})
_ATTN_OUT_MODULES = frozenset({"proj", "c_proj", "o_proj"})


def split_group_name(name: str) -> tuple[str, str | None]:
    """``"blocks.3.mixer.in_proj.weight::dd_A"`` -> ``("blocks.3.mixer.in_proj.weight", "dd_A")``."""
    base, sep, group = name.partition("::")
    return (base, group) if sep else (name, None)


def matches_any(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """True when a pattern is a substring of ``name`` or (if it has glob characters) fnmatch-matches it."""
    for p in patterns:
        if any(c in p for c in "*?[") and fnmatch.fnmatchcase(name, p):
            return True
        if p in name:
            return True
    return False


def tensor_role(name: str, control_patterns: tuple[str, ...] = CONTROL_PATTERNS) -> str:
    """The role of a state-dict tensor (or of a row-group piece ``param::group``).

    Returns one of :data:`ROLES`; a row-group piece of an SSM ``in_proj`` gets ``"ssm_in_proj:<group>"``
    (e.g. ``"ssm_in_proj:dd_A"``), a piece of any other tensor gets ``"<role>:<group>"``.

    >>> tensor_role("blocks.0.mixer.c_k.weight"), tensor_role("blocks.2.mixer.in_proj.weight::dd_A")
    ('attn_qkv', 'ssm_in_proj:dd_A')
    """
    base, group = split_group_name(name)
    role = _base_role(base, control_patterns)
    return f"{role}:{group}" if group is not None else role


def _base_role(name: str, control_patterns: tuple[str, ...]) -> str:
    parts = name.split(".")
    leaf = parts[-1]
    if matches_any(name, control_patterns):
        return "control"
    if "tok_emb" in name or "embed" in name or "lm_head" in name or "wte" in name:
        return "embedding"
    if "in_proj" in parts:
        return "ssm_in_proj"
    if "out_proj" in parts:
        return "ssm_out_proj"
    if leaf in _SSM_DYNAMICS_LEAVES:
        return "ssm_dynamics"
    if "mlp" in parts:
        return "mlp"
    module = parts[-2] if leaf in ("weight", "bias") and len(parts) >= 2 else leaf
    if module in _ATTN_QKV_MODULES:
        return "attn_qkv"
    if module in _ATTN_OUT_MODULES and ("mixer" in parts or "attn" in parts):
        return "attn_out"
    return "other"


def role_base(role: str) -> str:
    """``"ssm_in_proj:dd_A"`` -> ``"ssm_in_proj"``."""
    return role.split(":", 1)[0]
