"""State on disk is private to the user virtfleet runs as: whoever reads a disk image, the database (password
hashes) or a seed owns what is in it.

`serve` sets PRIVATE_UMASK for the whole process (files QEMU and the host tools create included); the places that
create files also give modes of their own, so the rule holds in any process that uses them (tests, the CLI).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) as 0700, or tighten it if it already exists with looser rights."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    tighten(path)


def tighten(path: Path) -> None:
    """Take the group's and others' rights away from `path` if it exists (a link is left alone: not ours)."""
    with contextlib.suppress(FileNotFoundError):
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
            path.chmod(stat.S_IMODE(mode) & ~0o077)


def create_private(path: Path) -> int:
    """Open the new file `path` for writing, mode 0600 from the start (O_EXCL: never through a link or over a file
    someone put there). Returns the file descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
