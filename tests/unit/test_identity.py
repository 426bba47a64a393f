"""File identity: every spelling of a path to one file is that file; other files are not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from virtfleet.storage.identity import file_id, same_file


def test_every_spelling_of_a_path_is_the_same_file(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    disk = pool / "disk"
    disk.write_bytes(b"x")
    (pool / "alias").symlink_to("disk")
    (pool / "sub" / "up").symlink_to("../disk")
    os.link(disk, pool / "hard")
    for spelling in (f"{pool}//disk", f"{pool}/./disk", f"{pool}/sub/../disk", f"{pool}/alias", f"{pool}/sub/up",
                     f"{pool}/hard", f"/{pool}///sub/./../alias"):
        assert same_file(spelling, disk), spelling
        assert file_id(spelling) == file_id(disk)


def test_other_files_and_missing_paths_are_not_the_file(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(b"x")
    shutil.copy(disk, tmp_path / "copy")  # the same bytes are not the same file
    (tmp_path / "loop").symlink_to("loop")
    assert not same_file(tmp_path / "copy", disk)
    for nothing in (tmp_path / "missing", tmp_path / "loop", tmp_path / "disk" / "below", "a\0b"):
        assert file_id(nothing) is None
        assert not same_file(nothing, disk) and not same_file(disk, nothing)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_bind_mount_is_the_same_file(tmp_path: Path) -> None:
    pool, other = tmp_path / "pool", tmp_path / "elsewhere"
    pool.mkdir()
    other.mkdir()
    (pool / "disk").write_bytes(b"x")
    code = f"from virtfleet.storage.identity import file_id; print(file_id({str(other / 'disk')!r}))"
    # A private mount namespace: the bind mount vanishes with the process, nothing is left on the host.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                           'mount --bind "$1" "$2" && exec "$3" -c "$4"', "sh", str(pool), str(other), sys.executable,
                           code], capture_output=True, text=True, env=env)
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip(f"no mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(file_id(pool / "disk"))
