"""A cloud-init NoCloud seed: an ISO labelled "cidata" holding `meta-data` and `user-data`.

This is the layout real cloud images read at first boot (cloud-init's NoCloud datasource finds any filesystem with
that label), and the built-in tiny guest reads it too (images/tiny.py). Written with pycdlib rather than
genisoimage/xorriso so building a seed needs no external tool.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pycdlib
import yaml

from virtfleet.errors import InvalidSpec
from virtfleet.private_files import PRIVATE_FILE

VOLUME_ID = "cidata"

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_SSH_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-[a-z0-9]+) ([A-Za-z0-9+/]+={0,2})(?: ([^\x00-\x1f\x7f]*))?")
# instance-id goes into YAML and onto the guest's console line unquoted: keep it to a safe alphabet.
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def _check_hostname(hostname: str) -> None:
    if len(hostname) > 253:
        raise InvalidSpec("hostname", f"{hostname[:40]!r}... is longer than 253 characters")
    labels = hostname.split(".")
    bad = [label for label in labels if not _LABEL.fullmatch(label)]
    if bad:
        raise InvalidSpec(
            "hostname",
            f"{hostname!r} is not a DNS name: each dot-separated label must be 1-63 letters, digits or hyphens, "
            "not starting or ending with a hyphen",
        )
    if labels[-1].isdigit():  # "10.0.0.1" is an address, not a name
        raise InvalidSpec("hostname", f"{hostname!r} is not a DNS name: its last label is all digits")


def _check_ssh_key(key: str) -> None:
    match = _SSH_KEY.fullmatch(key.strip())
    if not match:
        expected = "'ssh-ed25519|ssh-rsa|ecdsa-sha2-* <base64> [comment]' on one line"
        raise InvalidSpec("ssh_key", f"{key[:40]!r} is not an OpenSSH public key: expected {expected}")
    kind, blob = match.group(1), match.group(2)
    # The blob starts with its own key type: this catches a truncated paste or a key whose prefix was edited.
    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error:
        raw = b""
    (length,) = struct.unpack(">I", raw[:4]) if len(raw) >= 4 else (0,)
    if raw[4 : 4 + length] != kind.encode():
        raise InvalidSpec("ssh_key", f"{key[:40]!r}...: the base64 data is not a {kind} key")


@dataclass(frozen=True)
class CloudInit:
    """What a guest learns at first boot. instance_id is keyword-only: cloud-init reruns first-boot when it changes."""

    hostname: str
    user_data: str | None = None
    ssh_keys: tuple[str, ...] = ()
    instance_id: str = field(kw_only=True)

    def __post_init__(self) -> None:
        _check_hostname(self.hostname)
        for key in self.ssh_keys:
            _check_ssh_key(key)
        if self.user_data is not None and not self.user_data.startswith(("#cloud-config", "#!")):
            raise InvalidSpec("user_data", "must start with '#cloud-config' (cloud-config YAML) or '#!' (a script)")
        if not _INSTANCE_ID.fullmatch(self.instance_id):
            raise InvalidSpec(
                "instance_id", f"{self.instance_id!r} must be 1-128 letters, digits or '._:-', starting alphanumeric"
            )


def _yaml(document: dict[str, object]) -> str:
    # width: never fold a long ssh key over two lines (the tiny guest's shell reader expects one per line).
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=1 << 20)


def meta_data(ci: CloudInit) -> str:
    document: dict[str, object] = {"instance-id": ci.instance_id, "local-hostname": ci.hostname}
    if ci.ssh_keys:
        document["public-keys"] = [key.strip() for key in ci.ssh_keys]
    return _yaml(document)


def user_data(ci: CloudInit) -> str:
    if ci.user_data is not None:
        return ci.user_data
    document: dict[str, object] = {"hostname": ci.hostname}
    if ci.ssh_keys:
        document["ssh_authorized_keys"] = [key.strip() for key in ci.ssh_keys]
    return "#cloud-config\n" + _yaml(document)


def build_seed_iso(ci: CloudInit, dest: Path) -> Path:
    """Write the seed ISO to `dest` atomically (a reader never sees a half-written seed) and return `dest`."""
    iso = pycdlib.PyCdlib()
    # Rock Ridge and Joliet both carry the lowercase hyphenated names; the ISO9660 names are the 8.3 fallback.
    iso.new(vol_ident=VOLUME_ID, joliet=3, rock_ridge="1.09")
    files = {"meta-data": ("METADATA.;1", meta_data(ci)), "user-data": ("USERDATA.;1", user_data(ci))}
    for name, (iso_name, text) in files.items():
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/{iso_name}", rr_name=name, joliet_path=f"/{name}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            iso.write_fp(out)
        os.chmod(tmp, PRIVATE_FILE)  # a seed may carry secrets in its user-data
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        iso.close()
    return dest
