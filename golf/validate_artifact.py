"""`golf validate --artifact PATH [--config FIT.yaml] [--data.KEY VALUE ...]`: score an artifact alone, through the same
read-from-disk, dequantize, strict-load and scoring path as the end of `golf fit`."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser

from golf.artifact import code_bytes
from golf.data.datamodule import GolfData
from golf.errors import ConstraintViolation, GolfError
from golf.evaluate import evaluate_bpb
from golf.export import load_backbone


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="golf validate --artifact", description=__doc__, exit_on_error=True)
    parser.add_argument("--artifact", type=str, required=True, help="a golf artifact written by golf fit")
    parser.add_argument("--config", type=str, default=None, help="a golf fit YAML; only its data: section is used")
    parser.add_class_arguments(GolfData, "data")
    parser.add_argument("--cap_bytes", type=int, default=16_000_000, help="size cap (code + model bytes)")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu or cuda")
    parser.add_argument("--report", type=str, default=None, help="also write the result as JSON here")
    return parser


def _data_section(config_path: str) -> dict:
    path = Path(config_path)
    if not path.is_file():
        raise GolfError(f"{path}: config not found; pass the YAML used for golf fit")
    try:
        section = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    except yaml.YAMLError as e:
        raise GolfError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
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
    result = evaluate_bpb(model, dm.val_dataloader(), dm.byte_luts, device)
    model_bytes = Path(args.artifact).stat().st_size
    code = code_bytes()
    total = model_bytes + code.compressed
    out = {
        "artifact": args.artifact,
        **result.as_dict(),
        "model_bytes": model_bytes,
        "code_bytes_raw": code.raw,
        "code_bytes_compressed": code.compressed,
        "total_bytes": total,
        "cap": args.cap_bytes,
        "fits": total <= args.cap_bytes,
    }
    print(
        f"golf validate: {args.artifact}: val_loss {result.val_loss:.4f} val_bpb {result.val_bpb:.8f} "
        f"({result.tokens:,} tokens, {result.seconds:.1f}s); bytes model {model_bytes:,} + code {code.compressed:,} "
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
