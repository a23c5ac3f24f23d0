"""Per-step values that every rank must agree on (stop decisions, the budget clock), agreed without stalling the host.

Lightning's ``strategy.reduce`` and ``reduce_boolean_decision`` return the reduced value at once, so the host waits
for the collective, and on a GPU the collective waits for every kernel queued before it: the whole step. The GPU
then idles while the host runs the between-step Python. :class:`LaggedMax` queues the all-reduce (MAX) and the copy
of its result to pinned host memory, and the value is read one step later, waiting only for those two (an event).
Every rank reads the same agreed value at the same step, so decisions still match on all ranks; they are one step
late. Lightning has no asynchronous reduce, hence this small helper.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce_max(value: torch.Tensor) -> None:
    """In-place MAX over the ranks, queued (the stream waits for it, the host does not; gloo on CPU: waits)."""
    dist.all_reduce(value, op=dist.ReduceOp.MAX, async_op=True).wait()


class LaggedMax:
    """A number every rank gives each step, returned on the host one step later as the MAX over the ranks. One
    process: no collective; the read then only waits for the copy of a value computed on the device (e.g. a loss's
    finiteness), without synchronising the stream."""

    def __init__(self) -> None:
        self._host: torch.Tensor | None = None
        self._event: torch.cuda.Event | None = None
        self._pending = False

    def exchange(self, value: float | torch.Tensor, device: torch.device, world_size: int) -> float | None:
        """Queue this step's ``value`` and return the previous step's agreed value (``None`` at the first step)."""
        previous = self._read()
        if not isinstance(value, torch.Tensor):
            # torch.full passes the number as a kernel argument: no host-to-device copy, no synchronisation.
            value = torch.full((), value, dtype=torch.float64, device=device)
        value = value.detach().to(torch.float64).clone()
        if world_size > 1:
            all_reduce_max(value)
        if value.is_cuda:
            if self._event is None:
                self._host = torch.empty((), dtype=torch.float64, pin_memory=True)
                self._event = torch.cuda.Event()
            self._host.copy_(value, non_blocking=True)
            self._event.record()
        else:
            self._host = value
        self._pending = True
        return previous

    def last(self) -> float | None:
        """The agreed value of the last ``exchange`` not yet returned (at the end of training), else ``None``."""
        return self._read()

    def _read(self) -> float | None:
        if not self._pending:
            return None
        if self._event is not None:
            self._event.synchronize()
        self._pending = False
        return float(self._host)
