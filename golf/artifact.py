"""golf's submission artifact: one file holding the compressed quantized model, never a pickle.

File layout (all integers little-endian)::

    offset 0   8 bytes   magic  b"GOLFART\\x01"
    offset 8   u64       H = length of the JSON header in bytes (at most 1 MiB)
    offset 16  H bytes   UTF-8 JSON header
    16 + H     P bytes   payload = compress(safetensors bytes of the quantized tensors)

The header records ``format_version``, ``metadata`` (``model_config``, ``tokenizer_sha256``, ``code_sha256`` and
whatever else the caller passes), ``quant`` (scheme and per-tensor metadata, see :class:`golf.quant.QuantizedState`),
``compressor``, ``byte_shuffle`` (per-tensor element sizes, or null) and ``payload`` (``raw_bytes``,
``compressed_bytes``, ``sha256`` of the compressed bytes). Reading checks every declared size against the file and a
limit before allocating, verifies the hash, and decompresses with a hard output bound.

Size accounting follows the challenge: total = artifact file size + code bytes (see :func:`code_bytes`), against a
decimal cap of 16,000,000 bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import lzma
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from golf.compress import (
    METHODS,
    compress,
    compress_best,
    decompress,
    shuffle_tensors,
    unshuffle_tensors,
)
from golf.errors import ConstraintViolation, GolfError
from golf.quant import QuantizedState

MAGIC = b"GOLFART\x01"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sQ")
MAX_HEADER_BYTES = 1 << 20
ARTIFACT_CAP_BYTES = 16_000_000  # decimal, code + compressed model
_os_write = os.write  # indirection so tests can simulate a full disk


# -----------------------------------------------------------------------------
# Code bytes
# -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeSize:
    raw: int
    compressed: int
    files: list[str]
    sha256: str


def code_bytes(package_root: str | os.PathLike | None = None) -> CodeSize:
    """golf's "code bytes": the size of the source that a submission of this model would ship.

    Definition: every ``*.py`` file under the package directory (default: the installed ``golf`` package; hidden
    and ``__pycache__`` directories skipped), sorted by POSIX path relative to the package's parent directory
    (``golf/quant/int8.py``); each contributes ``relative_path + "\\n"`` followed by the file's bytes; the pieces are
    concatenated. ``raw`` is the length of that blob (UTF-8 bytes); ``compressed`` is its length after
    ``lzma.compress(blob, preset=9 | PRESET_EXTREME)`` (xz container), because the records ship their code as an
    LZMA-compressed self-extracting script. ``sha256`` is the hash of the raw blob (the artifact's ``code_sha256``).

    Like the challenge's ``train_gpt.py``, which both trains and scores, the counted code is everything that trains,
    quantizes, loads and evaluates a model. Left out are the tools that do none of that (``NOT_SHIPPED``): corpus
    building and data preparation (the challenge ships data separately and does not count its prep scripts), the
    study driver and the compressibility-report printer.

    This is an estimate of the shipped size, not a packager: a real self-extracting ``train_gpt.py`` also carries
    its few-line loader and, if it embeds the stream as base85 text, 25% encoding overhead.
    """
    root = Path(package_root) if package_root is not None else Path(__file__).resolve().parent
    if not root.is_dir():
        raise GolfError(f"code_bytes: {root} is not a directory; pass the golf package directory")
    files = sorted(
        (p for p in root.rglob("*.py") if not any(part.startswith(".") or part == "__pycache__"
                                                   for part in p.relative_to(root).parts)
         and p.relative_to(root).as_posix() not in NOT_SHIPPED),
        key=lambda p: p.relative_to(root.parent).as_posix(),
    )
    parts: list[bytes] = []
    rels: list[str] = []
    for p in files:
        rel = p.relative_to(root.parent).as_posix()
        rels.append(rel)
        parts.append(rel.encode("utf-8") + b"\n")
        parts.append(p.read_bytes())
    blob = b"".join(parts)
    sha = hashlib.sha256(blob).hexdigest()
    if sha not in _LZMA_SIZE_CACHE:
        _LZMA_SIZE_CACHE[sha] = len(lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME))
    return CodeSize(raw=len(blob), compressed=_LZMA_SIZE_CACHE[sha], files=rels, sha256=sha)


_LZMA_SIZE_CACHE: dict[str, int] = {}  # sha256 of the code blob -> compressed size
#: Package files (relative to the package) that neither train, quantize, load nor evaluate a model.
NOT_SHIPPED = frozenset({"data/corpora.py", "data/prepare.py", "study.py", "report_compress.py"})


# -----------------------------------------------------------------------------
# Write
# -----------------------------------------------------------------------------


@dataclass
class ArtifactInfo:
    """What :func:`write_artifact` wrote and how it counts against the cap."""

    path: str
    model_bytes: int  # artifact file size
    code_bytes_raw: int
    code_bytes_compressed: int
    total_bytes: int  # model_bytes + code_bytes_compressed
    cap: int
    fits: bool
    compressor: str
    payload_raw_bytes: int
    header_bytes: int
    sizes: dict[str, int] = field(default_factory=dict)  # per-compressor payload sizes when compressor="best"

    def check(self) -> None:
        """Raise :class:`ConstraintViolation` when the total is over the cap."""
        if not self.fits:
            raise ConstraintViolation(
                f"{self.path}: artifact {self.model_bytes:,} B + code {self.code_bytes_compressed:,} B = "
                f"{self.total_bytes:,} B exceeds the cap of {self.cap:,} B by {self.total_bytes - self.cap:,} B; "
                f"use fewer bits, a stronger compressor, or a smaller model"
            )

    def summary(self) -> str:
        verdict = "fits" if self.fits else "OVER"
        return (f"artifact {self.model_bytes:,} B ({self.compressor}) + code {self.code_bytes_compressed:,} B = "
                f"{self.total_bytes:,} B / cap {self.cap:,} B: {verdict} ({self.cap - self.total_bytes:+,} B)")


def _safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = _os_write(fd, view[: 1 << 22])
        view = view[n:]


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    """Write to a temp file in the same directory, fsync, then ``os.replace``; no partial file under ``path``."""
    directory = path.parent
    if not directory.is_dir():
        raise GolfError(f"{path}: directory {directory} does not exist; create it or choose another artifact path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise GolfError(f"{path}: cannot create a file in {directory} ({e.strerror or e}); check permissions and "
                        f"free space") from e
    try:
        try:
            for c in chunks:
                _write_all(fd, c)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            hint = "free disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check permissions and the path"
            raise GolfError(f"{path}: could not write the artifact ({e.strerror or e}); {hint} and retry") from e
        raise
    try:  # make the rename durable; not all filesystems allow fsync on a directory
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def write_artifact(
    path: str | os.PathLike,
    qs: QuantizedState,
    metadata: dict[str, Any],
    compressor: str = "lzma",
    byte_shuffle: bool = False,
    *,
    cap: int = ARTIFACT_CAP_BYTES,
    code_root: str | os.PathLike | None = None,
) -> ArtifactInfo:
    """Write ``qs`` and ``metadata`` as one artifact file, atomically.

    Args:
        path: destination file.
        qs: the quantized state (``golf.quant.quantize_state_dict``).
        metadata: JSON-able dict; ``model_config`` (dict), ``tokenizer_sha256`` and ``code_sha256`` are filled
            with ``{}``, ``None`` and the golf package's code hash when absent.
        compressor: ``zlib`` | ``lzma`` | ``brotli`` | ``zstd`` | ``best`` (smallest of all; sizes reported).
        byte_shuffle: byte-shuffle each multi-byte tensor before serialising (see :mod:`golf.compress`).
        cap: the size cap, decimal bytes (model + code).
        code_root: package directory for :func:`code_bytes` (default: golf).
    """
    path = Path(path)
    if compressor not in METHODS + ("best",):
        raise GolfError(f"{path}: unknown compressor {compressor!r}; use one of {', '.join(METHODS + ('best',))}")
    if not isinstance(metadata, dict):
        raise GolfError(f"{path}: artifact metadata must be a dict, got {type(metadata).__name__}")
    code = code_bytes(code_root)
    meta = dict(metadata)
    meta.setdefault("model_config", {})
    meta.setdefault("tokenizer_sha256", None)
    meta.setdefault("code_sha256", code.sha256)
    try:
        qs.validate()
    except ValueError as e:
        raise GolfError(f"{path}: the quantized state is inconsistent ({e}); quantize with golf.quant again") from None

    tensors = qs.tensors
    shuffle_info = None
    if byte_shuffle:
        tensors, shuffle_info = shuffle_tensors(tensors)
    raw = _safetensors_bytes(tensors)
    sizes: dict[str, int] = {}
    if compressor == "best":
        best = compress_best(raw)
        method, payload, sizes = best.method, best.data, best.sizes
    else:
        method, payload = compressor, compress(raw, compressor)

    header = {
        "format": "golf-artifact",
        "format_version": FORMAT_VERSION,
        "metadata": meta,
        "quant": qs.to_header(),
        "compressor": method,
        "byte_shuffle": shuffle_info,
        "payload": {
            "raw_bytes": len(raw),
            "compressed_bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "sizes": sizes,
        },
    }
    try:
        hbytes = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise GolfError(f"{path}: artifact metadata is not JSON-serialisable ({e}); pass plain dicts, lists, numbers "
                        f"and strings") from None
    if len(hbytes) > MAX_HEADER_BYTES:
        raise GolfError(f"{path}: artifact header is {len(hbytes):,} B, over the {MAX_HEADER_BYTES:,} B limit; "
                        f"pass less metadata")
    _atomic_write(path, [PREAMBLE.pack(MAGIC, len(hbytes)), hbytes, payload])
    model_bytes = path.stat().st_size
    total = model_bytes + code.compressed
    return ArtifactInfo(
        path=str(path), model_bytes=model_bytes, code_bytes_raw=code.raw, code_bytes_compressed=code.compressed,
        total_bytes=total, cap=int(cap), fits=total <= cap, compressor=method, payload_raw_bytes=len(raw),
        header_bytes=len(hbytes), sizes=sizes,
    )


# -----------------------------------------------------------------------------
# Read
# -----------------------------------------------------------------------------


def _not_artifact(path: Path, head: bytes) -> GolfError:
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        return GolfError(
            f"{path}: this is a pickle/torch checkpoint, not a golf artifact; pass it with --ckpt_path, "
            f"artifacts come from golf fit"
        )
    if head[:2] in (b"\x78\xda", b"\x78\x9c", b"\x78\x01", b"\x78\x5e"):
        return GolfError(
            f"{path}: this looks like a zlib-compressed file (e.g. the challenge baseline's .ptz), not a golf "
            f"artifact; artifacts come from golf fit"
        )
    return GolfError(f"{path}: not a golf artifact (bad magic bytes {head[:8]!r}); artifacts come from golf fit")


def read_artifact(path: str | os.PathLike, max_raw_bytes: int = 256_000_000) -> tuple[QuantizedState, dict[str, Any]]:
    """Read, verify and decode an artifact: returns ``(quantized state, header)``.

    ``header["metadata"]`` is the metadata given to :func:`write_artifact`. Every failure is a one-line
    :class:`GolfError` naming ``path``: missing file, wrong magic (pickle/torch checkpoints are recognised),
    truncation, oversized header or declared sizes (decompression-bomb guard, ``max_raw_bytes``), hash mismatch,
    unsupported version, undecodable payload.
    """
    path = Path(path)
    if not path.exists():
        raise GolfError(f"{path}: artifact not found; check the path or run golf fit to produce one")
    if not path.is_file():
        raise GolfError(f"{path}: not a regular file; pass the artifact file path")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise GolfError(f"{path}: cannot open the artifact ({e.strerror or e}); check permissions") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        pre = f.read(PREAMBLE.size)
        if pre[: len(MAGIC)] != MAGIC[: min(len(pre), len(MAGIC))]:
            raise _not_artifact(path, pre)
        if len(pre) < PREAMBLE.size:
            raise GolfError(f"{path}: truncated artifact ({size} B, shorter than its preamble); regenerate it")
        _, hlen = PREAMBLE.unpack(pre)
        if hlen > MAX_HEADER_BYTES:
            raise GolfError(
                f"{path}: artifact header declares {hlen:,} B, over the {MAX_HEADER_BYTES:,} B limit; the file is "
                f"corrupt or hostile, regenerate it"
            )
        if PREAMBLE.size + hlen > size:
            raise GolfError(f"{path}: truncated artifact (header needs {hlen:,} B, file has {size:,} B); regenerate it")
        hbytes = f.read(hlen)
        try:
            header = json.loads(hbytes.decode("utf-8"))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except (UnicodeDecodeError, ValueError) as e:
            raise GolfError(f"{path}: artifact header is not valid JSON ({e}); the file is corrupt, regenerate it") \
                from None
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise GolfError(
                f"{path}: artifact format version {version!r} is not supported (this golf reads version "
                f"{FORMAT_VERSION}); re-export it with this golf version"
            )
        pay = header.get("payload")
        try:
            raw_bytes = int(pay["raw_bytes"])
            comp_bytes = int(pay["compressed_bytes"])
            want_sha = str(pay["sha256"])
            method = str(header["compressor"])
        except (TypeError, KeyError, ValueError):
            raise GolfError(f"{path}: artifact header lacks payload sizes/hash or compressor; regenerate it") from None
        if method not in METHODS:
            raise GolfError(f"{path}: artifact compressor {method!r} is unknown; use one of {', '.join(METHODS)}")
        # compressed data is never much larger than its raw form: bound both before reading anything
        if raw_bytes < 0 or comp_bytes < 0 or raw_bytes > max_raw_bytes or comp_bytes > max_raw_bytes + (1 << 20):
            raise GolfError(
                f"{path}: artifact declares a payload of {raw_bytes:,} B (compressed {comp_bytes:,} B), outside "
                f"0..{max_raw_bytes:,} B (decompression-bomb guard); regenerate it or raise max_raw_bytes"
            )
        remaining = size - PREAMBLE.size - hlen
        if comp_bytes > remaining:
            raise GolfError(f"{path}: truncated artifact (payload needs {comp_bytes:,} B, {remaining:,} B present); "
                            f"regenerate it")
        if comp_bytes < remaining:
            raise GolfError(f"{path}: {remaining - comp_bytes:,} unexpected trailing bytes after the payload; "
                            f"the file is corrupt, regenerate it")
        payload = f.read(comp_bytes)
    if len(payload) != comp_bytes:
        raise GolfError(f"{path}: truncated artifact (short read); regenerate it")
    if hashlib.sha256(payload).hexdigest() != want_sha:
        raise GolfError(f"{path}: payload sha256 mismatch: the artifact was modified or corrupted; regenerate it")
    raw = decompress(payload, method, raw_bytes, what=str(path))
    if len(raw) != raw_bytes:
        raise GolfError(f"{path}: payload decompressed to {len(raw):,} B, header says {raw_bytes:,} B; regenerate it")
    try:
        from safetensors.torch import load

        tensors = load(raw)
        shuffle_info = header.get("byte_shuffle")
        if shuffle_info:
            tensors = unshuffle_tensors(tensors, shuffle_info)
        qs = QuantizedState.from_header(header.get("quant"), tensors)
    except GolfError:
        raise
    except Exception as e:
        raise GolfError(f"{path}: artifact payload does not decode ({type(e).__name__}: {e}); regenerate it") \
            from None
    return qs, header
