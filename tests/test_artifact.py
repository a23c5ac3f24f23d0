"""The artifact file: bit-exact round trip, atomic writes, and a one-line GolfError for every malformed input."""

import errno
import hashlib
import json
import os
import pickle
import struct
import zlib

import pytest
import torch

import golf.artifact as art
from golf.artifact import MAGIC, code_bytes, read_artifact, write_artifact
from golf.errors import ConstraintViolation, GolfError
from golf.quant import QuantScheme, dequantize_state_dict, quantize_state_dict

IN_PROJ = "blocks.1.mixer.in_proj.weight"


@pytest.fixture(scope="module")
def code_root(tmp_path_factory):
    """A tiny stand-in package, so code_bytes() stays fast in these tests."""
    root = tmp_path_factory.mktemp("pkg") / "golf"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text('"""pkg"""\n')
    (root / "sub" / "mod.py").write_text("X = 1\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "junk.py").write_text("ignored\n")
    return root


@pytest.fixture(scope="module")
def qs():
    torch.manual_seed(0)
    sd = {
        "tok_emb.weight": torch.randn(512, 256) * 0.02,
        "blocks.0.mixer.c_q.weight": torch.randn(256, 256) * 0.02,
        "blocks.0.mixer.q_gain": torch.full((4,), 1.5),
        IN_PROJ: torch.randn(400, 256) * 0.02,
        "blocks.1.mixer.dt_bias": torch.randn(16),
        "blocks.1.mix_scale": torch.ones(256),
        "steps": torch.tensor([7, 8], dtype=torch.int64),
    }
    groups = {IN_PROJ: [("z", 0, 128), ("x", 128, 256), ("B", 256, 320), ("C", 320, 384), ("dd_dt", 384, 392),
                        ("dd_A", 392, 400)]}
    return quantize_state_dict(sd, QuantScheme(method="int6", clip="sdclip", passthrough_max_numel=4096),
                               row_groups=groups)


META = {"model_config": {"d_model": 256, "layers": ["attn", "ssm"]}, "tokenizer_sha256": "ab" * 32, "note": "x"}


def _write(tmp_path, qs, code_root, name="m.golf", **kw):
    return write_artifact(tmp_path / name, qs, META, code_root=code_root, **kw)


@pytest.mark.parametrize("compressor,shuffle", [("lzma", False), ("zstd", True), ("best", True), ("zlib", False)])
def test_round_trip_is_bit_exact(tmp_path, qs, code_root, compressor, shuffle):
    info = _write(tmp_path, qs, code_root, compressor=compressor, byte_shuffle=shuffle)
    qs2, header = read_artifact(info.path)
    assert set(qs2.tensors) == set(qs.tensors)
    for k, t in qs.tensors.items():
        assert qs2.tensors[k].dtype == t.dtype and torch.equal(qs2.tensors[k], t), k
    assert qs2.meta == qs.meta and qs2.scheme == qs.scheme
    a, b = dequantize_state_dict(qs), dequantize_state_dict(qs2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    md = header["metadata"]
    assert md["model_config"] == META["model_config"] and md["tokenizer_sha256"] == META["tokenizer_sha256"]
    assert md["code_sha256"] == code_bytes(code_root).sha256
    assert info.model_bytes == os.path.getsize(info.path)
    assert info.total_bytes == info.model_bytes + info.code_bytes_compressed and info.fits
    if compressor == "best":
        assert set(info.sizes) == {"zlib", "lzma", "brotli", "zstd"}
        assert header["compressor"] == info.compressor == min(info.sizes, key=info.sizes.get)
    else:
        assert header["compressor"] == compressor
    assert (header["byte_shuffle"] is not None) == shuffle


def test_cap_accounting(tmp_path, qs, code_root):
    info = _write(tmp_path, qs, code_root, cap=1000)
    assert not info.fits
    with pytest.raises(ConstraintViolation, match="exceeds the cap") as e:
        info.check()
    assert e.value.exit_code == 3 and str(tmp_path) in str(e.value)


def test_code_bytes_definition(code_root):
    import lzma

    cs = code_bytes(code_root)
    assert cs.files == ["golf/__init__.py", "golf/sub/mod.py"]
    blob = b'golf/__init__.py\n"""pkg"""\ngolf/sub/mod.py\nX = 1\n'
    assert cs.raw == len(blob) and cs.sha256 == hashlib.sha256(blob).hexdigest()
    assert cs.compressed == len(lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME))
    real = code_bytes()  # the golf package itself
    assert "golf/artifact.py" in real.files and 0 < real.compressed < real.raw


# -----------------------------------------------------------------------------
# Malformed inputs
# -----------------------------------------------------------------------------


def _raises(path, match):
    with pytest.raises(GolfError, match=match) as e:
        read_artifact(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, msg
    return msg


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[16 : 16 + hlen])
    edit(header)
    hb = json.dumps(header).encode()
    path.write_bytes(MAGIC + struct.pack("<Q", len(hb)) + hb + raw[16 + hlen :])


def test_missing_file(tmp_path):
    _raises(tmp_path / "nope.golf", "not found")


def test_tampered_payload(tmp_path, qs, code_root):
    info = _write(tmp_path, qs, code_root)
    raw = bytearray(open(info.path, "rb").read())
    raw[-10] ^= 0x01
    open(info.path, "wb").write(bytes(raw))
    _raises(info.path, "sha256 mismatch")


def test_truncated_file(tmp_path, qs, code_root):
    info = _write(tmp_path, qs, code_root)
    raw = open(info.path, "rb").read()
    (hlen,) = struct.unpack("<Q", raw[8:16])
    p = tmp_path / "cut.golf"
    for cut in (0, 5, 12, 16 + hlen // 2, 16 + hlen + 3, len(raw) - 1):
        p.write_bytes(raw[:cut])
        _raises(p, "truncated")


def test_wrong_magic(tmp_path):
    p = tmp_path / "random.bin"
    p.write_bytes(b"hello world, definitely not an artifact")
    _raises(p, "not a golf artifact")


def test_pickle_and_torch_checkpoints_are_recognised(tmp_path):
    p = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, p)  # zip container: "PK"
    msg = _raises(p, "pickle/torch checkpoint")
    assert "--ckpt_path" in msg and "golf fit" in msg
    p2 = tmp_path / "model.pkl"
    p2.write_bytes(pickle.dumps({"w": [1, 2, 3]}, protocol=4))  # starts with \x80
    _raises(p2, "pickle/torch checkpoint")
    p3 = tmp_path / "final_model.int8.ptz"
    p3.write_bytes(zlib.compress(b"baseline payload", 9))
    _raises(p3, "zlib")


def test_absurd_header_and_declared_sizes(tmp_path, qs, code_root):
    p = tmp_path / "huge_header.golf"
    p.write_bytes(MAGIC + struct.pack("<Q", 1 << 40) + b"{}")
    _raises(p, "header declares")
    info = _write(tmp_path, qs, code_root, name="declared.golf")
    _rewrite_header(tmp_path / "declared.golf", lambda h: h["payload"].update(raw_bytes=10**12))
    _raises(info.path, "bomb")
    _rewrite_header(tmp_path / "declared.golf", lambda h: h["payload"].update(raw_bytes=-1))
    _raises(info.path, "bomb")
    _rewrite_header(tmp_path / "declared.golf", lambda h: h["payload"].update(raw_bytes=10, compressed_bytes=10**12))
    _raises(info.path, "bomb")
    p2 = tmp_path / "badjson.golf"
    p2.write_bytes(MAGIC + struct.pack("<Q", 5) + b"{oops")
    _raises(p2, "JSON")


def test_decompression_bomb(tmp_path, qs, code_root):
    info = _write(tmp_path, qs, code_root, compressor="zlib")
    bomb = zlib.compress(b"\0" * (16 << 20), 9)
    raw = open(info.path, "rb").read()
    (hlen,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[16 : 16 + hlen])
    header["payload"].update(compressed_bytes=len(bomb), sha256=hashlib.sha256(bomb).hexdigest(), raw_bytes=1000)
    hb = json.dumps(header).encode()
    open(info.path, "wb").write(MAGIC + struct.pack("<Q", len(hb)) + hb + bomb)
    _raises(info.path, "exceeds the limit")


def test_unsupported_version(tmp_path, qs, code_root):
    info = _write(tmp_path, qs, code_root)
    _rewrite_header(tmp_path / "m.golf", lambda h: h.update(format_version=99))
    _raises(info.path, "version 99 is not supported")


def test_inconsistent_quant_metadata(tmp_path, qs, code_root):
    info = _write(tmp_path, qs, code_root)
    _rewrite_header(tmp_path / "m.golf", lambda h: h["quant"]["tensors"]["tok_emb.weight"].update(shape=[3, 3]))
    _raises(info.path, "does not decode")


# -----------------------------------------------------------------------------
# Atomic write
# -----------------------------------------------------------------------------


def test_enospc_leaves_no_file_under_the_final_name(tmp_path, qs, code_root, monkeypatch):
    calls = {"n": 0}
    real_write = os.write

    def full_disk(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: max(1, len(data) // 2)]))  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(art, "_os_write", full_disk)
    target = tmp_path / "out.golf"
    with pytest.raises(GolfError, match="free disk space") as e:
        write_artifact(target, qs, META, code_root=code_root)
    assert str(target) in str(e.value)
    assert not target.exists()
    assert os.listdir(tmp_path) == []  # the temp file is gone too

    # an existing artifact under that name is left untouched
    monkeypatch.setattr(art, "_os_write", real_write)
    write_artifact(target, qs, META, code_root=code_root)
    before = target.read_bytes()
    calls["n"] = 0
    monkeypatch.setattr(art, "_os_write", full_disk)
    with pytest.raises(GolfError):
        write_artifact(target, qs, {"model_config": {"other": 1}}, code_root=code_root)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["out.golf"]


def test_bad_write_arguments(tmp_path, qs, code_root):
    with pytest.raises(GolfError, match="compressor"):
        write_artifact(tmp_path / "a.golf", qs, META, compressor="gzip", code_root=code_root)
    with pytest.raises(GolfError, match="JSON"):
        write_artifact(tmp_path / "a.golf", qs, {"x": object()}, code_root=code_root)
    with pytest.raises(GolfError, match="does not exist"):
        write_artifact(tmp_path / "no" / "a.golf", qs, META, code_root=code_root)
    assert not (tmp_path / "a.golf").exists()
