"""`golf` command line: `golf fit|validate` are LightningCLI subcommands; `golf data prepare` and `golf study` are
small argparse programs in front of it (LightningCLI subcommands can only be Trainer methods)."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.exceptions import SIGTERMException

from golf.errors import GolfError

USAGE = """usage: golf {fit,validate} --config CONFIG.yaml [...]   (LightningCLI; --help for every option)
       golf validate --artifact PATH --config CONFIG.yaml  (score a golf artifact)
       golf data prepare --out DIR [--corpus default|large | --input FILES] [--vocab N]
       golf study [...]"""


def _lightning_cli(args: list[str] | None):
    from lightning.pytorch.cli import LightningCLI

    from golf.data.datamodule import GolfData
    from golf.model import GolfLM

    class GolfCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # vocab and window length are data facts: declared once under data, copied into the model.
            parser.link_arguments("data.vocab_size", "model.vocab_size")
            parser.link_arguments("data.seq_len", "model.seq_len")

    return GolfCLI(
        GolfLM,
        GolfData,
        args=args,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "yaml"},
        auto_configure_optimizers=False,
    )


def main(argv: list[str] | None = None) -> int:
    # golf passes argv to LightningCLI itself (after adding defaults); the library's own noise is not the user's.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        if argv[:2] == ["data", "prepare"]:
            from golf.data.prepare import main as prepare_main

            return prepare_main(argv[2:])
        if argv[0] == "data":
            raise GolfError(f"unknown command `golf {' '.join(argv[:2])}`; did you mean `golf data prepare`?")
        if argv[0] == "study":
            from golf.study import main as study_main

            return study_main(argv[1:])
        if argv[0] == "validate" and any(a == "--artifact" or a.startswith("--artifact=") for a in argv):
            from golf.validate_artifact import main as validate_artifact

            return validate_artifact(argv[1:])
        if argv[0] in ("fit", "validate", "test", "predict") and not any(a.startswith("--weights_only") for a in argv):
            # Checkpoints are read with torch.load(weights_only=True): no code runs from a checkpoint file.
            argv.append("--weights_only=true")
        _lightning_cli(argv)
        return 0
    except GolfError as e:
        logging.getLogger("golf").debug("golf error", exc_info=True)
        print(f"golf: error: {e}", file=sys.stderr)
        return e.exit_code
    except MisconfigurationException as e:
        # e.g. devices or an accelerator that this machine does not have
        first = " ".join(str(e).split())
        print(f"golf: error: trainer: {first} (set --trainer.accelerator / --trainer.devices to what this machine has)",
              file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"golf: error: {e}; check the path", file=sys.stderr)
        return 2
    except SIGTERMException:
        print("golf: terminated (SIGTERM); a resumable checkpoint was saved if SaveOnInterrupt is configured",
              file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
