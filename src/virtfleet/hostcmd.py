"""Running host tools (qemu-img, lvm, mount, ip, nft, bridge): one place for lookup, timeouts, locale and how a
failure reads. Each caller says what it was doing and how to condense its tool's stderr into one line."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence

from virtfleet.errors import DriverError
from virtfleet.private_files import PRIVATE_UMASK

SBIN = ("/usr/sbin", "/sbin")  # ip, nft, lvm and mount helpers live here; a non-login PATH may lack them


def find_tool(name: str, *, missing: str, hint: str) -> str:
    """The tool's path; DriverError(missing, hint) when it is not installed."""
    found = shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)
    if found is None:
        raise DriverError(missing, hint)
    return found


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no error output")


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float | None,
    error: type[DriverError] = DriverError,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    condense: Callable[[str], str] = first_line,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run one command in the C locale (messages we match on stay English) and a private umask (the images qemu-img
    creates are 0600); `error(what, cause)` when it cannot run, times out, or (with `check`) exits non-zero, the cause
    being its stderr condensed to one line."""
    try:
        # S603: an argument list and no shell; callers pass tools they looked up and values they checked.
        done = subprocess.run(list(argv), input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,  # noqa: S603
                              capture_output=True, text=True, check=False, timeout=timeout, umask=PRIVATE_UMASK,
                              env={**os.environ, "LC_ALL": "C", **(env or {})})
    except subprocess.TimeoutExpired:
        raise error(what, f"no answer after {timeout:g}s") from None
    except OSError as exc:
        raise error(f"cannot run {argv[0]}", str(exc)) from exc
    if check and done.returncode != 0:
        raise error(what, condense(done.stderr or done.stdout))
    return done
