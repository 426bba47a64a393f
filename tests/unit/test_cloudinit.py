"""The cloud-init NoCloud seed: input validation, the two documents, and the ISO read back with pycdlib."""

from __future__ import annotations

import base64
import io
import os
import struct
from pathlib import Path

import pycdlib
import pytest
import yaml

from virtfleet.errors import InvalidSpec
from virtfleet.images.cloudinit import VOLUME_ID, CloudInit, build_seed_iso, meta_data, user_data
from virtfleet.images.tiny import GUEST_MODULES, RC


def ssh_key(kind: str = "ssh-ed25519", comment: str = "me@laptop") -> str:
    """A well-formed public key: the base64 blob starts with its own length-prefixed key type, as OpenSSH's do."""
    blob = struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", 32) + os.urandom(32)
    return f"{kind} {base64.b64encode(blob).decode()} {comment}".rstrip()


def test_valid_inputs_are_accepted() -> None:
    keys = (ssh_key(), ssh_key("ssh-rsa", ""), ssh_key("ecdsa-sha2-nistp256"))
    ci = CloudInit("web-1.example.com", "#!/bin/sh\necho hi\n", keys, instance_id="i-0123:abc")
    assert ci.ssh_keys == keys
    CloudInit("A1", user_data="#cloud-config\n{}\n", instance_id="x")


@pytest.mark.parametrize(
    "hostname", ["", "-web", "web-", "web_1", "a..b", "web.", "x" * 64, ".".join(["a" * 63] * 5), "10.0.0.1", "a b"]
)
def test_bad_hostnames_name_the_field(hostname: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        CloudInit(hostname, instance_id="i-1")
    assert caught.value.field == "hostname"


@pytest.mark.parametrize(
    "key",
    [
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",  # not an accepted type
        "ssh-ed25519",  # no key data
        "ssh-ed25519 not*base64",
        "ssh-ed25519 AAAA\nssh-rsa AAAA",  # two lines would inject a second YAML entry
        "ssh-ed25519 " + ssh_key("ssh-rsa").split()[1],  # the blob says ssh-rsa
        "ssh-ed25519 " + ssh_key().split()[1][:10],  # truncated paste
    ],
)
def test_bad_ssh_keys_name_the_field(key: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        CloudInit("web", ssh_keys=(key,), instance_id="i-1")
    assert caught.value.field == "ssh_key"


@pytest.mark.parametrize("data", ["", "hostname: web\n", " #cloud-config\n", "Content-Type: multipart/mixed\n"])
def test_bad_user_data_names_the_field(data: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        CloudInit("web", user_data=data, instance_id="i-1")
    assert caught.value.field == "user_data"


@pytest.mark.parametrize("instance_id", ["", "has space", "new\nline", "-leading", "x" * 129])
def test_bad_instance_ids_name_the_field(instance_id: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        CloudInit("web", instance_id=instance_id)
    assert caught.value.field == "instance_id"


def test_meta_data_is_yaml_with_one_line_per_key() -> None:
    key = ssh_key(comment="a long comment " * 10)  # longer than PyYAML's default fold width
    text = meta_data(CloudInit("web-1", ssh_keys=(key,), instance_id="1234"))
    assert yaml.safe_load(text) == {"instance-id": "1234", "local-hostname": "web-1", "public-keys": [key]}
    assert f"- {key}\n" in text  # the tiny guest counts keys line by line
    assert "public-keys" not in meta_data(CloudInit("web-1", instance_id="i-1"))


def test_user_data_is_the_given_text_or_a_minimal_cloud_config() -> None:
    key = ssh_key()
    minimal = user_data(CloudInit("web-1", ssh_keys=(key,), instance_id="i-1"))
    assert minimal.startswith("#cloud-config\n")
    assert yaml.safe_load(minimal) == {"hostname": "web-1", "ssh_authorized_keys": [key]}
    given = "#!/bin/sh\ntouch /ran\n"
    assert user_data(CloudInit("web-1", user_data=given, instance_id="i-1")) == given


def read_iso_file(iso: pycdlib.PyCdlib, **path: str) -> str:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **path)
    return out.getvalue().decode()


def test_seed_iso_has_the_nocloud_label_and_both_files(tmp_path: Path) -> None:
    ci = CloudInit("seeded", ssh_keys=(ssh_key(),), instance_id="i-42")
    dest = build_seed_iso(ci, tmp_path / "seeds" / "seed.iso")
    assert dest == tmp_path / "seeds" / "seed.iso"
    assert [p.name for p in dest.parent.iterdir()] == ["seed.iso"]  # no temporary file left behind
    iso = pycdlib.PyCdlib()
    iso.open(str(dest))
    try:
        assert iso.pvd.volume_identifier.rstrip(b" ") == VOLUME_ID.encode() == b"cidata"
        assert iso.has_rock_ridge() and iso.has_joliet()
        names = {child.rock_ridge.name().decode() for child in iso.list_children(rr_path="/") if child.rock_ridge}
        assert names == {".", "..", "meta-data", "user-data"}  # no network-config
        for read in ({"rr_path": "/meta-data"}, {"joliet_path": "/meta-data"}):
            assert read_iso_file(iso, **read) == meta_data(ci)
        assert read_iso_file(iso, rr_path="/user-data") == user_data(ci)
        assert read_iso_file(iso, joliet_path="/user-data") == user_data(ci)
    finally:
        iso.close()


@pytest.mark.usefixtures("usual_umask")
def test_a_seed_is_private(tmp_path: Path) -> None:
    """Its user-data may carry passwords or keys."""
    dest = build_seed_iso(CloudInit("web", instance_id="i-1"), tmp_path / "seed.iso")
    assert dest.stat().st_mode & 0o777 == 0o600


def test_seed_iso_replaces_an_existing_file(tmp_path: Path) -> None:
    dest = tmp_path / "seed.iso"
    dest.write_bytes(b"stale")
    build_seed_iso(CloudInit("web", instance_id="i-1"), dest)
    assert dest.stat().st_size > 2048 * 16 and dest.read_bytes()[0x8001:0x8006] == b"CD001"


def test_tiny_guest_reads_the_seed_before_announcing_readiness() -> None:
    assert "isofs" in GUEST_MODULES
    seed = RC.index("mount -t iso9660 -o ro")
    assert RC.index("virtfleet.hostname=") < seed < RC.index("VIRTFLEET-READY hostname=$(hostname)")
    assert RC.count("virtfleet-cloudinit: hostname=") == 1 and "sleep" not in RC[: RC.index("VIRTFLEET-READY")]
