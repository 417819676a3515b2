"""Where aios keeps what it builds once (converted models, the sched_ext micro-VM, run metrics).

One rule, used everywhere: an explicit directory wins, else ``$AIOS_CACHE_DIR``, else ``~/.cache/aios``.
Kept free of heavy imports so the sched_ext toolchain and the CLI can ask without loading torch.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("AIOS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aios"
