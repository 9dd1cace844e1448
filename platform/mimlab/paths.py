"""Where the platform keeps generated data and local state. Read from the environment at call time."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Cache root (the embedded dataset lives here): ``$MIMLAB_CACHE_DIR`` or ``~/.cache/mimlab``."""
    root = os.environ.get("MIMLAB_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mimlab")
    return Path(root)
