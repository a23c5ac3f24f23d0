"""Byte compressors for artifacts, with bomb-safe bounded decompression and an optional byte shuffle.

Methods and settings (the strongest standard setting of each, as the challenge records used them):

=========  =================================  =========================================
method     compress                           module
=========  =================================  =========================================
zlib       level 9                            :mod:`zlib`
lzma       preset ``9 | PRESET_EXTREME`` (xz)  :mod:`lzma`
brotli     quality 11 (window 24)             ``brotli``
zstd       level 22                           ``zstandard``
=========  =================================  =========================================

``compress(data, "best")`` tries all four and keeps the smallest, prefixing one tag byte naming the winner so that
``decompress(blob, "best", …)`` works; :func:`compress_best` returns the winner and every size instead.

:func:`decompress` never holds more than ``max_output`` bytes of output (+ one bounded chunk): it streams and
raises :class:`GolfError` as soon as the output would exceed ``max_output``, on truncated input, and on trailing
bytes after the end of the stream.

Byte shuffle (:func:`byte_shuffle`): for a stream of ``n`` elements of ``k`` bytes, write byte 0 of every element,
then byte 1 of every element, …; the high bytes of fp16/fp32 values are then contiguous and repetitive, which
general-purpose compressors exploit. :func:`shuffle_tensors` applies it per tensor, recording the element size.
"""

from __future__ import annotations

import lzma
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from golf.errors import GolfError

METHODS = ("zlib", "lzma", "brotli", "zstd")
_TAGS = {m: i + 1 for i, m in enumerate(METHODS)}  # tag byte of compress(..., "best")
_CHUNK = 1 << 20  # output chunk of the streaming decompressors


# -----------------------------------------------------------------------------
# Compress
# -----------------------------------------------------------------------------


def _check_method(method: str, allow_best: bool = True) -> None:
    ok = METHODS + (("best",) if allow_best else ())
    if method not in ok:
        raise GolfError(f"unknown compressor {method!r}; use one of {', '.join(ok)}")


def compress(data: bytes, method: str) -> bytes:
    """Compress ``data`` with ``method`` (``zlib``, ``lzma``, ``brotli``, ``zstd`` or ``best``)."""
    _check_method(method)
    data = bytes(data) if not isinstance(data, bytes) else data
    if method == "best":
        res = compress_best(data)
        return bytes([_TAGS[res.method]]) + res.data
    if method == "zlib":
        return zlib.compress(data, 9)
    if method == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    if method == "brotli":
        import brotli

        return brotli.compress(data, quality=11, lgwin=24)
    import zstandard

    return zstandard.ZstdCompressor(level=22, write_content_size=True).compress(data)


@dataclass
class BestResult:
    """The smallest compression of some data, and the size under every method tried."""

    method: str
    data: bytes
    sizes: dict[str, int] = field(default_factory=dict)


def compress_best(data: bytes, methods: tuple[str, ...] = METHODS) -> BestResult:
    """Compress with every method in ``methods`` and keep the smallest (ties: the earlier method)."""
    best: BestResult | None = None
    sizes: dict[str, int] = {}
    for m in methods:
        _check_method(m, allow_best=False)
        blob = compress(data, m)
        sizes[m] = len(blob)
        if best is None or len(blob) < len(best.data):
            best = BestResult(m, blob)
    if best is None:
        raise GolfError("compress_best: no compressor given; pass at least one of " + ", ".join(METHODS))
    best.sizes = sizes
    return best


# -----------------------------------------------------------------------------
# Bounded decompress
# -----------------------------------------------------------------------------


class _Sink:
    def __init__(self, max_output: int, what: str) -> None:
        self.parts: list[bytes] = []
        self.n = 0
        self.max = int(max_output)
        self.what = what

    def room(self) -> int:
        """Bytes we may still accept, plus one (to detect overflow without producing more)."""
        return max(self.max - self.n, 0) + 1

    def add(self, b: bytes) -> None:
        if not b:
            return
        self.n += len(b)
        if self.n > self.max:
            raise GolfError(
                f"{self.what}: decompressed data exceeds the limit of {self.max:,} bytes (possible decompression "
                f"bomb or corrupt file); regenerate the file, or raise the limit if it is genuinely this large"
            )
        self.parts.append(b)

    def result(self) -> bytes:
        return b"".join(self.parts)


def _truncated(what: str, method: str) -> GolfError:
    return GolfError(f"{what}: {method} stream is truncated or corrupt; the file is incomplete, regenerate it")


def decompress(data: bytes, method: str, max_output: int, *, what: str = "compressed data") -> bytes:
    """Decompress at most ``max_output`` bytes; raise GolfError beyond that, on truncation or trailing garbage.

    ``what`` names the source in error messages (e.g. the artifact path).
    """
    _check_method(method)
    if max_output < 0:
        raise ValueError("max_output must be >= 0")
    data = bytes(data) if not isinstance(data, bytes) else data
    if method == "best":
        if not data or data[0] not in _TAGS.values():
            raise GolfError(f"{what}: missing or unknown compressor tag; it was not written by compress(..., 'best')")
        inner = METHODS[data[0] - 1]
        return decompress(data[1:], inner, max_output, what=what)
    sink = _Sink(max_output, what)
    try:
        if method == "zlib":
            _zlib(data, sink, what)
        elif method == "lzma":
            _lzma(data, sink, what)
        elif method == "brotli":
            _brotli(data, sink, what)
        else:
            _zstd(data, sink, what)
    except GolfError:
        raise
    except Exception as e:  # library-specific corruption errors
        raise GolfError(f"{what}: {method} data is corrupt ({type(e).__name__}: {e}); regenerate the file") from None
    return sink.result()


def _zlib(data: bytes, sink: _Sink, what: str) -> None:
    d = zlib.decompressobj()
    buf = data
    while True:
        out = d.decompress(buf, min(_CHUNK, sink.room()))
        sink.add(out)
        buf = d.unconsumed_tail
        if d.eof:
            break
        if not out and not buf:
            raise _truncated(what, "zlib")
    if d.unused_data:
        raise GolfError(f"{what}: trailing bytes after the zlib stream; the file is corrupt, regenerate it")


def _lzma(data: bytes, sink: _Sink, what: str) -> None:
    d = lzma.LZMADecompressor()
    buf = data
    while not d.eof:
        out = d.decompress(buf, max_length=min(_CHUNK, sink.room()))
        buf = b""
        sink.add(out)
        if not d.eof and d.needs_input:
            raise _truncated(what, "lzma")
    if d.unused_data:
        raise GolfError(f"{what}: trailing bytes after the lzma stream; the file is corrupt, regenerate it")


def _brotli(data: bytes, sink: _Sink, what: str) -> None:
    import brotli

    d = brotli.Decompressor()
    # output_buffer_limit stops the output buffer from growing past the limit (it may overshoot by one internal
    # block, ~2 MiB at most), so each call's output is bounded.
    sink.add(d.process(data, output_buffer_limit=min(_CHUNK, sink.room())))
    idle = 0
    while not d.is_finished():
        out = d.process(b"", output_buffer_limit=min(_CHUNK, sink.room()))
        sink.add(out)
        idle = 0 if out else idle + 1
        if idle and d.can_accept_more_data() or idle > 2:  # wants input we do not have
            raise _truncated(what, "brotli")


def _zstd(data: bytes, sink: _Sink, what: str) -> None:
    import zstandard

    try:
        declared = zstandard.get_frame_parameters(data).content_size
    except zstandard.ZstdError:
        raise _truncated(what, "zstd") from None
    if declared not in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR) and declared > sink.max:
        raise GolfError(
            f"{what}: zstd frame declares {declared:,} bytes, over the limit of {sink.max:,} (possible decompression "
            f"bomb); regenerate the file"
        )
    # zstandard's decompressobj has no output bound, so feed the input in small pieces: a zstd block of b input
    # bytes expands to at most ~32768·b bytes (RLE blocks), which bounds each step's output.
    d = zstandard.ZstdDecompressor().decompressobj()
    pos = 0
    while pos < len(data) and not d.eof:
        room = sink.room()
        step_in = int(min(max(64, room // 32768), 1 << 16))
        sink.add(d.decompress(data[pos : pos + step_in]))
        pos += step_in
    if not d.eof:
        raise _truncated(what, "zstd")
    if d.unused_data or pos < len(data):
        raise GolfError(f"{what}: trailing bytes after the zstd frame; the file is corrupt, regenerate it")


# -----------------------------------------------------------------------------
# Byte shuffle
# -----------------------------------------------------------------------------


def byte_shuffle(data: bytes, elem_size: int) -> bytes:
    """Group byte 0 of every ``elem_size``-byte element, then byte 1, … (identity for ``elem_size == 1``)."""
    if elem_size < 1 or len(data) % elem_size:
        raise ValueError(f"byte_shuffle: {len(data)} bytes are not a whole number of {elem_size}-byte elements")
    if elem_size == 1:
        return bytes(data)
    a = np.frombuffer(data, dtype=np.uint8).reshape(-1, elem_size)
    return np.ascontiguousarray(a.T).tobytes()


def byte_unshuffle(data: bytes, elem_size: int) -> bytes:
    """Inverse of :func:`byte_shuffle`."""
    if elem_size < 1 or len(data) % elem_size:
        raise ValueError(f"byte_unshuffle: {len(data)} bytes are not a whole number of {elem_size}-byte elements")
    if elem_size == 1:
        return bytes(data)
    a = np.frombuffer(data, dtype=np.uint8).reshape(elem_size, -1)
    return np.ascontiguousarray(a.T).tobytes()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The tensor's raw bytes in native (little-endian) order."""
    t = t.detach().to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def shuffle_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Byte-shuffle every tensor with multi-byte elements into a flat uint8 tensor.

    Returns the new tensor dict and ``{name: {"dtype", "shape", "elem_size"}}`` for the shuffled ones
    (single-byte tensors are left as they are).
    """
    out: dict[str, torch.Tensor] = {}
    info: dict[str, dict] = {}
    for name, t in tensors.items():
        k = t.element_size()
        if k == 1 or t.numel() == 0:
            out[name] = t
            continue
        raw = byte_shuffle(tensor_bytes(t), k)
        out[name] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        info[name] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "elem_size": k}
    return out, info


_SHUFFLE_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16)
}


def unshuffle_tensors(tensors: dict[str, torch.Tensor], info: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`shuffle_tensors` (raises ValueError on inconsistent sizes)."""
    out = dict(tensors)
    for name, i in info.items():
        t = tensors[name]
        dtype = _SHUFFLE_DTYPES.get(i.get("dtype"))
        if dtype is None or t.dtype != torch.uint8:
            raise ValueError(f"shuffled tensor {name!r} has an unexpected dtype")
        k = int(i["elem_size"])
        shape = [int(s) for s in i["shape"]]
        n = int(np.prod(shape)) if shape else 1
        if k != torch.empty((), dtype=dtype).element_size() or t.numel() != n * k:
            raise ValueError(f"shuffled tensor {name!r} has {t.numel()} bytes, expected {n * k}")
        raw = byte_unshuffle(tensor_bytes(t), k)
        out[name] = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape).clone()
    return out
