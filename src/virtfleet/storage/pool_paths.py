"""Where a dir or nfs pool may live: a rule that is safe by construction rather than a list of places to avoid.

A pool's directory receives files whose names and bytes users choose (uploads, imports), so a pool in the wrong place
is a way to write /var/spool/cron/crontabs/root or a systemd drop-in. The rule therefore names where pools may be, not
where they may not: strictly below one of the pool roots (the data directory's own pools/, and the trees an admin
lists in VIRTFLEET_POOL_ROOTS, by default /srv, /mnt, /media and /data). A list of system trees is kept as a second
line, for roots drawn too wide (even with "/" as a root, /etc stays out), and the rest of the data directory (the
database, tokens, run state) is never a pool.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from virtfleet.errors import InvalidSpec

# Never a pool, whatever the roots say: the system, its configuration, and what daemons read from /var.
SYSTEM_TREES = tuple(Path(p) for p in (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run", "/sbin", "/sys",
    "/usr", "/var/cache", "/var/lib/apt", "/var/lib/dpkg", "/var/lib/systemd", "/var/log", "/var/mail", "/var/spool",
))


def _inside(path: Path, root: Path) -> bool:
    return path != root and path.is_relative_to(root)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def check_pool_path(text: str, *, roots: Sequence[Path], data_dir: Path, internal: Sequence[Path],
                    existing: Sequence[Path]) -> None:
    """Refuse (InvalidSpec "path") a pool directory, as the user spelled it, that is not plainly spelled, not
    strictly below a pool root, in or over a system tree, in the data directory outside `internal` (its pool areas),
    or overlapping a pool."""
    if not text.isprintable():
        raise InvalidSpec("path", f"{text!r} contains control characters (a newline, a tab...)")
    if not os.path.isabs(text) or os.path.normpath(text) != text or text.startswith("//"):
        raise InvalidSpec("path", f"{text!r} must be an absolute path without '.', '..', '//' or a trailing '/'")
    path = Path(text)
    real = _real(path)
    if real != path:
        raise InvalidSpec("path", f"{text} goes through a symbolic link; give the real path ({real})")
    for tree in SYSTEM_TREES:
        if real == tree or _inside(real, tree) or _inside(tree, real):
            raise InvalidSpec("path", f"{text} is in or holds the system directory {tree}; pools need a directory "
                                      "of their own")
    data = _real(data_dir)
    if real == data or _inside(data, real):
        raise InvalidSpec("path", f"{text} holds virtfleet's own data directory")
    own_areas = [_real(area) for area in internal]
    if _inside(real, data) and not any(_inside(real, area) for area in own_areas):
        raise InvalidSpec("path", f"{text} is in virtfleet's data directory; pools there go under "
                                  f"{' or '.join(map(str, own_areas))}")
    allowed = [*own_areas, *(_real(root) for root in roots)]
    if not any(_inside(real, root) for root in allowed):
        raise InvalidSpec("path", f"{text} is not below a pool root ({', '.join(map(str, allowed))}); an admin "
                                  "adds roots with VIRTFLEET_POOL_ROOTS")
    for other in existing:
        other_real = _real(other)
        if real == other_real or _inside(real, other_real) or _inside(other_real, real):
            raise InvalidSpec("path", f"{text} overlaps the pool at {other}")
