"""Atomic file replacement: a reader never sees half a file, and a failed write leaves nothing behind."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_destination(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a temporary path in `path`'s folder; when the block succeeds it is renamed over `path`, when it
    fails it is removed. `suffix` lets writers that choose a format by extension (SimpleITK) see the real one."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # a no-op after the rename
