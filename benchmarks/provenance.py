"""Which code a benchmark result came from, for its JSON: the commit named by ``GOLF_COMMIT`` when set (a working tree
copied to a GPU machine can carry a stale ``.git``, whose HEAD would then be wrong), else ``git rev-parse``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def code_commit() -> str:
    if os.environ.get("GOLF_COMMIT"):
        return os.environ["GOLF_COMMIT"]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False)
    return git.stdout.strip() or "unknown"
