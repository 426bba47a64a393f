"""Disk images through the CLI's client against a live server: uploaded and downloaded in a stream, byte for byte."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.functional.test_cli import cli, cli_json


def test_a_volume_goes_up_and_comes_back_unchanged(server_url: str, tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(3 << 20) + b"end")  # several chunks, and a short last one
    uploaded = cli_json(server_url, "volume", "upload", "default/up", str(image), "--format", "raw")
    assert uploaded["name"] == "up"
    back = tmp_path / "back.raw"
    assert cli_json(server_url, "volume", "download", "up", str(back)) == {"bytes": image.stat().st_size,
                                                                         "path": str(back)}
    assert back.read_bytes() == image.read_bytes()
    assert stat.S_IMODE(back.stat().st_mode) == 0o600
    code, _, err = cli(server_url, "volume", "download", "missing", str(tmp_path / "none.raw"))
    assert code == 1 and "missing" in err and not (tmp_path / "none.raw").exists()
