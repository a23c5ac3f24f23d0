"""`golf validate --artifact PATH [--config FIT.yaml] [--data.KEY VALUE ...] [--eval.KEY VALUE ...]`: score an artifact
alone, through the same read-from-disk, dequantize, strict-load and scoring path as the end of `golf fit`. The eval
mode defaults to the Finalize callback's ``eval:`` section of the fit YAML (windows if it has none); ``--eval.*`` flags
override it (docs/eval.md)."""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser

from golf.artifact import code_bytes
from golf.data.datamodule import GolfData
from golf.errors import ConstraintViolation, GolfError
from golf.eval import EvalConfig, TTTConfig, evaluate
from golf.export import load_backbone


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="golf validate --artifact", description=__doc__, exit_on_error=True)
    parser.add_argument("--artifact", type=str, required=True, help="a golf artifact written by golf fit")
    parser.add_argument("--config", type=str, default=None,
                        help="a golf fit YAML; its data: section and its Finalize callback's eval: section are used")
    parser.add_class_arguments(GolfData, "data")
    parser.add_class_arguments(EvalConfig, "eval", help="how the artifact is scored (docs/eval.md)")
    parser.add_argument("--cap_bytes", type=int, default=16_000_000, help="size cap (code + model bytes)")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu or cuda")
    parser.add_argument("--report", type=str, default=None, help="also write the result as JSON here")
    return parser


def _load_yaml(config_path: str) -> dict:
    path = Path(config_path)
    if not path.is_file():
        raise GolfError(f"{path}: config not found; pass the YAML used for golf fit")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise GolfError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None


def _eval_section(config_path: str) -> dict:
    """The ``eval`` init_args of the fit YAML's Finalize callback as ``eval.KEY`` / ``eval.ttt.KEY`` defaults."""
    callbacks = ((_load_yaml(config_path).get("trainer") or {}).get("callbacks")) or []
    for cb in callbacks if isinstance(callbacks, list) else []:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("Finalize"):
            section = (cb.get("init_args") or {}).get("eval") or {}
            out = {f"eval.{k}": v for k, v in section.items() if k != "ttt"}
            out.update({f"eval.ttt.{k}": v for k, v in (section.get("ttt") or {}).items()})
            return out
    return {}


def _data_section(config_path: str) -> dict:
    path = Path(config_path)
    section = _load_yaml(config_path).get("data") or {}
    known = set(inspect.signature(GolfData.__init__).parameters) - {"self"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise GolfError(f"{path}: unknown data key(s) {unknown}; known: {sorted(known)}")
    return section


def main(argv: list[str]) -> int:
    parser = build_parser()
    config = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"), None)
    if config:
        parser.set_defaults({f"data.{k}": v for k, v in _data_section(config).items()})
        parser.set_defaults(_eval_section(config))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dm = GolfData(**vars(args.data) if not hasattr(args.data, "as_dict") else args.data.as_dict())
    dm.setup("validate")
    model, header = load_backbone(args.artifact, device)
    meta = header["metadata"]
    if meta.get("tokenizer_sha256") and meta["tokenizer_sha256"] != dm.tokenizer_sha256:
        raise GolfError(
            f"{args.artifact}: artifact was trained with another tokenizer (sha256 {meta['tokenizer_sha256'][:12]}…) "
            f"than {dm.data_dir}'s; pass --data.data_dir/--data.tokenizer of the run that made it"
        )
    if model.vocab_size != dm.vocab_size:
        raise GolfError(f"{args.artifact}: model vocab {model.vocab_size} != data.vocab_size {dm.vocab_size}; set --data.vocab_size {model.vocab_size}")
    ev = args.eval.as_dict()
    eval_cfg = EvalConfig(**{k: v for k, v in ev.items() if k != "ttt"}, ttt=TTTConfig(**ev["ttt"]))
    result = evaluate(model, dm.load_val(), dm.seq_len, dm.byte_luts, device, eval_cfg,
                      batch_tokens=dm.val_forward_tokens)
    model_bytes = Path(args.artifact).stat().st_size
    code = code_bytes()
    total = model_bytes + code.compressed
    out = {
        "artifact": args.artifact,
        **result.as_dict(),
        "eval": asdict(eval_cfg),
        "model_bytes": model_bytes,
        "code_bytes_raw": code.raw,
        "code_bytes_compressed": code.compressed,
        "total_bytes": total,
        "cap": args.cap_bytes,
        "fits": total <= args.cap_bytes,
    }
    print(
        f"golf validate: {args.artifact}: val_loss {result.val_loss:.4f} val_bpb {result.val_bpb:.8f} "
        f"({result.tokens:,} tokens, {result.seconds:.1f}s, eval {result.mode}"
        + (f" + ttt {result.ttt} {result.ttt_steps} steps {result.ttt_seconds:.1f}s" if result.ttt != "none" else "")
        + f"); bytes model {model_bytes:,} + code {code.compressed:,} "
        f"= {total:,} / cap {args.cap_bytes:,} -> {'fits' if out['fits'] else 'OVER THE CAP'}"
    )
    if args.report:
        Path(args.report).write_text(json.dumps(out, indent=2) + "\n")
    if not out["fits"]:
        raise ConstraintViolation(
            f"{args.artifact}: {total:,} bytes (model {model_bytes:,} + code {code.compressed:,}) > cap {args.cap_bytes:,}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
