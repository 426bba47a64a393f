"""What a path *is*, however it is spelled.

Two strings can name one file: repeated slashes, `.` and `..`, symbolic links, hard links, bind mounts. Deciding
which volume a path is (and so how it is opened, whether it is a template, who has it attached) by comparing strings
lets a second spelling slip past every rule made for the first. The file's identity does not change with spelling.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

FileId = tuple[int, int]


def file_id(path: str | Path) -> FileId | None:
    """(device, inode) of the file `path` leads to (links followed); for a block device, the device it opens.

    None when nothing is there (or it cannot be reached): such a path is no file's spelling.
    """
    try:
        info = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        return None
    if stat.S_ISBLK(info.st_mode):
        # Two device nodes (/dev/dm-3, /dev/vg/lv) are different inodes that open the same device.
        return (-1, info.st_rdev)
    return (info.st_dev, info.st_ino)


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one existing file."""
    first = file_id(a)
    return first is not None and first == file_id(b)
