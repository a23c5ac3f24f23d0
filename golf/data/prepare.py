"""`golf data prepare`: documents -> SentencePiece tokenizer -> challenge-format shards + manifest.json."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np

from golf.data.shards import find_shards, shard_name, write_shard
from golf.data.tokenizer import BOS_ID, file_sha256, load_tokenizer, train_tokenizer
from golf.errors import GolfError

MANIFEST = "manifest.json"
SHUFFLE_SEED = 1337


def documents_sha256(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def encode_documents(sp, texts: list[str]) -> np.ndarray:
    """Each document becomes ``[BOS] + tokens`` (no EOS), concatenated in order, as the challenge exports do."""
    pieces = []
    for ids in sp.encode(texts, num_threads=os.cpu_count() or 1):
        pieces.append(np.asarray([BOS_ID] + ids, dtype=np.uint16))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


def write_split(out_dir: Path, split: str, tokens: np.ndarray, shard_tokens: int) -> list[str]:
    names = []
    for i, start in enumerate(range(0, max(len(tokens), 1), shard_tokens)):
        name = shard_name(split, i)
        write_shard(out_dir / name, tokens[start : start + shard_tokens])
        names.append(name)
    return names


def prepare(
    texts: list[str],
    out_dir: Path,
    vocab_size: int = 1024,
    val_docs: int | None = None,
    tokenizer: Path | None = None,
    shard_tokens: int = 10**8,
    seed: int = SHUFFLE_SEED,
    sources: list[dict] | None = None,
) -> dict:
    """Shuffle documents with a fixed seed, hold out the first ``val_docs`` as val, train (or reuse) a tokenizer on
    the train documents only, and write shards plus a manifest. Returns the manifest."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        raise GolfError(f"{out_dir}: need at least 2 non-empty documents to make a train and a val split, got {len(texts)}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    texts = [texts[i] for i in order]
    n_val = val_docs if val_docs is not None else max(1, len(texts) // 10)
    if not 0 < n_val < len(texts):
        raise GolfError(f"--val-docs {n_val} must be between 1 and {len(texts) - 1} for {len(texts)} documents")
    val_texts, train_texts = texts[:n_val], texts[n_val:]

    stale = find_shards(out_dir, "train") + find_shards(out_dir, "val")
    for path in stale:
        path.unlink()
    if tokenizer is None:
        tokenizer = train_tokenizer(train_texts, vocab_size, out_dir / f"tokenizer_sp{vocab_size}.model")
    sp = load_tokenizer(tokenizer)
    if sp.get_piece_size() > vocab_size:
        raise GolfError(f"{tokenizer}: has {sp.get_piece_size()} pieces, more than --vocab {vocab_size}; pass --vocab {sp.get_piece_size()}")

    manifest = {
        "format": "golf-shards-v1",
        "vocab_size": vocab_size,
        "tokenizer": str(Path(tokenizer).resolve().relative_to(out_dir.resolve()))
        if Path(tokenizer).resolve().is_relative_to(out_dir.resolve())
        else str(Path(tokenizer).resolve()),
        "tokenizer_sha256": file_sha256(tokenizer),
        "shuffle_seed": seed,
        "docs_sha256": documents_sha256(texts),
        "sources": sources or [],
    }
    for split, split_texts in (("val", val_texts), ("train", train_texts)):
        tokens = encode_documents(sp, split_texts)
        manifest[split] = {
            "docs": len(split_texts),
            "tokens": int(tokens.size),
            "utf8_bytes": sum(len(t.encode("utf-8")) for t in split_texts),
            "shards": write_split(out_dir, split, tokens, shard_tokens),
        }
    manifest["seconds"] = round(time.time() - t0, 2)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(data_dir: Path) -> dict | None:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GolfError(f"{path}: not valid JSON ({e.msg}); delete it and re-run `golf data prepare`") from None


def main(argv: list[str] | None = None) -> int:
    from golf.data import corpora

    parser = argparse.ArgumentParser(prog="golf data prepare", description=__doc__)
    parser.add_argument("--corpus", default="default", help="'default' (embedded Jane Austen), 'large' (Debian docs via apt)")
    parser.add_argument("--input", nargs="*", type=Path, default=None, help="your own .txt/.jsonl[.gz|.xz] files instead of --corpus")
    parser.add_argument("--out", type=Path, required=True, help="output directory for shards, tokenizer and manifest.json")
    parser.add_argument("--vocab", type=int, default=1024, help="tokenizer vocabulary size (1024, 4096, 8192, ...)")
    parser.add_argument("--val-docs", type=int, default=None, help="documents held out as val (default: 10%%)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="reuse an existing SentencePiece .model")
    parser.add_argument("--shard-tokens", type=int, default=10**8)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path.home() / ".cache" / "golf" / "debian-docs",
        help="where --corpus large keeps its downloads (about 375 MB)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="golf: %(message)s")

    sources = None
    if args.input:
        docs = corpora.read_text_files(args.input)
    elif args.corpus == "default":
        docs = corpora.default_documents()
    elif args.corpus == "large":
        docs, sources = corpora.build_large_corpus(args.cache_dir)
    else:
        raise GolfError(f"--corpus {args.corpus!r} is not known; use 'default', 'large' or --input FILES")
    manifest = prepare(
        [d.text for d in docs],
        args.out,
        vocab_size=args.vocab,
        val_docs=args.val_docs,
        tokenizer=args.tokenizer,
        shard_tokens=args.shard_tokens,
        sources=sources,
    )
    print(
        f"prepared {args.out}: vocab {manifest['vocab_size']}, "
        f"train {manifest['train']['docs']} docs / {manifest['train']['tokens']:,} tokens, "
        f"val {manifest['val']['docs']} docs / {manifest['val']['tokens']:,} tokens "
        f"({manifest['val']['utf8_bytes'] / max(manifest['val']['tokens'], 1):.2f} bytes/token) in {manifest['seconds']} s"
    )
    return 0
