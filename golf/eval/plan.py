"""Evaluation plans (pure numpy): which windows run, which of their targets are scored, and in what order.

Positions index the val token array. Target ``t`` is token ``t`` predicted from tokens ``< t``; position 0 is never a
target. Every mode scores the targets ``1 .. usable`` with ``usable = ((len(val) - 1) // seq_len) * seq_len``.

A window ``(a, e, k)`` feeds inputs ``tokens[a:e]``, predicts targets ``a+1 .. e`` and scores the last ``k`` of them
(``e-k+1 .. e``). Plans are built causally: a window's start depends only on positions and on BOS tokens *before*
its scored targets, never on what comes after (a segment that ends early truncates its windows, it does not move
them), so with a causal model a target's score is a function of its prefix alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from golf.data.tokenizer import BOS_ID


def usable_targets(n_tokens: int, seq_len: int) -> int:
    """Last target position scored: the challenge truncates val to a multiple of seq_len targets."""
    return ((n_tokens - 1) // seq_len) * seq_len


@dataclass
class Windows:
    a: np.ndarray  # int64: first input position
    e: np.ndarray  # int64: last target position (= exclusive end of the inputs)
    k: np.ndarray  # int64: number of scored targets (the last k of the window)
    seg: np.ndarray  # int64: segment (document / sub-stream) index, 0 when the mode has one segment

    def __len__(self) -> int:
        return len(self.a)

    @property
    def score_from(self) -> np.ndarray:
        return self.e - self.k + 1

    def take(self, sl) -> Windows:
        return Windows(self.a[sl], self.e[sl], self.k[sl], self.seg[sl])

    @staticmethod
    def concat(parts: list[Windows]) -> Windows:
        if not parts:
            z = np.zeros(0, dtype=np.int64)
            return Windows(z, z, z, z)
        return Windows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("a", "e", "k", "seg")))


def sliding(lo: int, hi: int, seq_len: int, stride: int, seg: int = 0) -> Windows:
    """Windows over a segment whose first input is ``lo`` and last target ``hi``: starts ``lo, lo+stride, ...``
    while ``start + seq_len - stride < hi``; the first window scores all its targets, later ones the targets past the
    previous window (their last ``stride``, fewer in a truncated tail). stride == seq_len: non-overlapping windows.
    Each target in ``lo+1 .. hi`` is scored by exactly one window."""
    if hi <= lo:
        return Windows.concat([])
    m = hi - lo - seq_len
    count = 1 + (-(-m // stride) if m > 0 else 0)
    i = np.arange(count, dtype=np.int64)
    a = lo + stride * i
    e = np.minimum(a + seq_len, hi)
    sf = np.where(i == 0, lo + 1, a + seq_len - stride + 1)
    return Windows(a, e, e - sf + 1, np.full(count, seg, dtype=np.int64))


def doc_segments(tokens: np.ndarray, usable: int) -> tuple[np.ndarray, np.ndarray]:
    """Documents as ``(lo, hi)``: lo = the BOS that opens the document (or position 0), hi = the next BOS (or
    ``usable``). The document's targets are ``lo+1 .. hi``: its tokens, then the next document's BOS, scored from this
    document's context only (the model predicting the end of the document). 0 bytes, as BOS always counts."""
    bos = np.flatnonzero(tokens[:usable] == BOS_ID).astype(np.int64)
    lo = np.unique(np.concatenate([np.zeros(1, dtype=np.int64), bos]))
    hi = np.append(lo[1:], usable).astype(np.int64)
    return lo, hi


def windows_plan(usable: int, seq_len: int) -> Windows:
    return sliding(0, usable, seq_len, seq_len)


def sliding_plan(usable: int, seq_len: int, stride: int) -> Windows:
    return sliding(0, usable, seq_len, stride)


def doc_isolated_plan(tokens: np.ndarray, usable: int, seq_len: int, stride: int) -> Windows:
    lo, hi = doc_segments(tokens, usable)
    return Windows.concat([sliding(int(a), int(b), seq_len, stride, seg=i) for i, (a, b) in enumerate(zip(lo, hi))])


def doc_chunks(lo: int, hi: int, seq_len: int, chunk: int, seg: int = 0) -> Windows:
    """Per-document TTT chunks: chunk j scores targets ``lo+1+j*chunk .. lo+(j+1)*chunk`` (cut at ``hi``) from a
    window that starts at ``max(lo, lo+(j+1)*chunk - seq_len)`` (the untruncated end, so it is causal)."""
    n = -(-(hi - lo) // chunk)
    j = np.arange(n, dtype=np.int64)
    e_full = lo + (j + 1) * chunk
    e = np.minimum(e_full, hi)
    a = np.maximum(lo, e_full - seq_len)
    sf = lo + j * chunk + 1
    return Windows(a, e, e - sf + 1, np.full(n, seg, dtype=np.int64))


def stream_starts(tokens: np.ndarray, usable: int, n_streams: int) -> np.ndarray:
    """Starts of ``n_streams`` contiguous sub-streams over targets ``1 .. usable``: the nominal even split points, each
    moved forward to the first BOS before the next split point (so that sub-streams are whole documents and TTT over
    parallel sub-streams only reorders whole documents); a split with no BOS in reach stays where it is."""
    n_streams = max(1, min(n_streams, usable))
    nominal = np.array([usable * s // n_streams for s in range(n_streams)] + [usable], dtype=np.int64)
    bos = np.flatnonzero(tokens[:usable] == BOS_ID)
    starts = [0]
    for s in range(1, n_streams):
        q, q_next = nominal[s], nominal[s + 1]
        i = np.searchsorted(bos, q)
        p = int(bos[i]) if i < len(bos) and bos[i] < q_next else int(q)
        if p > starts[-1]:
            starts.append(p)
    return np.array(starts, dtype=np.int64)


def stream_windows(lo: int, hi: int, seq_len: int, seg: int = 0) -> Windows:
    """A sub-stream as consecutive non-overlapping windows, all targets scored (the last window may be short)."""
    return sliding(lo, hi, seq_len, seq_len, seg)


def train_spans(t0: int, t1: int, seq_len: int, cuts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Training sequences over targets ``t0 .. t1``: ``(a, e)`` pairs (inputs ``a..e-1``, targets ``a+1..e``) of at most
    seq_len targets, split at the segment starts in ``cuts`` so that no sequence crosses a document boundary."""
    if t1 < t0:
        z = np.zeros(0, dtype=np.int64)
        return z, z
    bounds = [t0 - 1]
    if cuts is not None and len(cuts):
        inner = cuts[(cuts >= t0) & (cuts < t1)]
        bounds += [int(c) for c in inner]
    bounds.append(t1)
    a_parts, e_parts = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi <= lo:
            continue
        a = np.arange(lo, hi, seq_len, dtype=np.int64)
        a_parts.append(a)
        e_parts.append(np.minimum(a + seq_len, hi))
    return np.concatenate(a_parts), np.concatenate(e_parts)
