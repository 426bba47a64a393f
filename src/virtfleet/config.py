"""Settings for one virtfleet server, from the environment (VIRTFLEET_*) with safe defaults."""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass
from pathlib import Path

from virtfleet.storage.addresses import ALLOW_VARIABLE, IPNetwork, parse_networks

DEFAULT_PORT = 8470
# The largest virtual size a volume may have (created, resized, cloned, uploaded or imported). 4 TiB is more than the
# disks of the VMs one host runs, and it bounds what a tiny crafted image can cost: converting a sparse vhdx takes
# qemu-img about 40 s of CPU per TiB it claims, so a "60 TiB" file of 15 MiB ran for 40 minutes; at 4 TiB it is ~3.
DEFAULT_MAX_VOLUME_SIZE = 4 * 1024**4
# Where dir and nfs pools may be made besides the data directory's own pools/: trees an admin keeps for data.
DEFAULT_POOL_ROOTS = (Path("/srv"), Path("/mnt"), Path("/media"), Path("/data"))
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
ADMIN_TOKEN_FILE = "admin.token"  # in the data directory: the local admin's API token (mode 0600)  # noqa: S105 - a file name, not a secret


def is_loopback(host: str) -> bool:
    """True for a loopback address or "localhost" (not for a name that merely resolves to one)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/virtfleet")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "virtfleet"


def data_dir_from_env() -> Path:
    """$VIRTFLEET_DATA_DIR, else the default: all a client needs to find a local server's admin token."""
    return Path(os.environ.get("VIRTFLEET_DATA_DIR", str(default_data_dir())))


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    driver: str = "qemu"
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # The full reconcile pass (every domain against every record): only the fallback, since state changes arrive
    # as the hypervisor's events; it still catches what no event announces (a domain started outside virtfleet).
    reconcile_interval: float = 30.0
    metrics_interval: float = 10.0  # how often each running VM's usage is sampled (the last hour is kept)
    qemu_binary: str = "qemu-system-x86_64"
    max_volume_size: int = DEFAULT_MAX_VOLUME_SIZE
    pool_roots: tuple[Path, ...] = DEFAULT_POOL_ROOTS
    # Imports from a URL fetch only from public addresses, and from these networks (VIRTFLEET_IMPORT_ALLOW).
    import_allow: tuple[IPNetwork, ...] = ()
    # v2v: the only server-side places `virtfleet import` reads and `virtfleet export` writes (admin-set), and the
    # host block devices an import may read (Xen phy:, libvirt type='block'), as glob patterns.
    import_root: Path | None = None
    export_root: Path | None = None
    import_devices: tuple[str, ...] = ()
    # The fake driver only (tests, demos): capabilities it lacks, as a JSON object such as {"pause": false}.
    fake_capabilities: str = ""

    def __post_init__(self) -> None:
        # Imported here, not at the top: the CLI imports this module for its defaults, and the model package loads
        # pydantic and every model (more than a whole `virtfleet version` may cost).
        from virtfleet.model.storage import MAX_VOLUME_BYTES, MIN_VOLUME_BYTES
        from virtfleet.model.units import format_size

        self.driver_setting()  # a bad --driver / VIRTFLEET_DRIVER is refused at start-up, naming the setting
        if not 0 < self.reconcile_interval < math.inf:
            raise ValueError(f"reconcile_interval (VIRTFLEET_RECONCILE_INTERVAL) must be a positive number of seconds, "
                             f"not {self.reconcile_interval}")
        if not MIN_VOLUME_BYTES <= self.max_volume_size <= MAX_VOLUME_BYTES:
            raise ValueError(f"max_volume_size (VIRTFLEET_MAX_VOLUME_SIZE) must lie between "
                             f"{format_size(MIN_VOLUME_BYTES)} and {format_size(MAX_VOLUME_BYTES)}, "
                             f"not {self.max_volume_size} bytes")
        if self.fake_capabilities and self.driver != "fake":
            raise ValueError("fake_capabilities (VIRTFLEET_FAKE_CAPABILITIES) applies to the fake driver only")
        for root in self.pool_roots:
            if not root.is_absolute():
                raise ValueError(f"pool_roots (VIRTFLEET_POOL_ROOTS): {root} is not an absolute path")

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        values: dict[str, object] = {
            "data_dir": data_dir_from_env(),
            "driver": env.get("VIRTFLEET_DRIVER", "qemu"),
            "database_url": env.get("VIRTFLEET_DATABASE_URL", ""),
            "qemu_binary": env.get("VIRTFLEET_QEMU", "qemu-system-x86_64"),
            "metrics_interval": float(env.get("VIRTFLEET_METRICS_INTERVAL", "10")),
            "import_allow": parse_networks(env.get(ALLOW_VARIABLE, "")),
            "import_root": Path(env["VIRTFLEET_IMPORT_DIR"]) if env.get("VIRTFLEET_IMPORT_DIR") else None,
            "export_root": Path(env["VIRTFLEET_EXPORT_DIR"]) if env.get("VIRTFLEET_EXPORT_DIR") else None,
            "import_devices": tuple(p for p in env.get("VIRTFLEET_IMPORT_DEVICES", "").split(",") if p.strip()),
            "fake_capabilities": env.get("VIRTFLEET_FAKE_CAPABILITIES", ""),
        }
        if "VIRTFLEET_MAX_VOLUME_SIZE" in env:
            from virtfleet.model.units import parse_size_bytes  # see __post_init__

            try:
                values["max_volume_size"] = parse_size_bytes(env["VIRTFLEET_MAX_VOLUME_SIZE"], default_unit="b")
            except ValueError as error:
                raise ValueError(f"VIRTFLEET_MAX_VOLUME_SIZE: {error}") from None
        if "VIRTFLEET_RECONCILE_INTERVAL" in env:
            try:
                values["reconcile_interval"] = float(env["VIRTFLEET_RECONCILE_INTERVAL"])
            except ValueError:
                raise ValueError(f"VIRTFLEET_RECONCILE_INTERVAL: {env['VIRTFLEET_RECONCILE_INTERVAL']!r} is not a "
                                 "number of seconds") from None
        if "VIRTFLEET_POOL_ROOTS" in env:  # colon-separated, like PATH; empty: only the data directory's pools/
            values["pool_roots"] = tuple(Path(p) for p in env["VIRTFLEET_POOL_ROOTS"].split(":") if p)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def driver_setting(self) -> tuple[str, dict[str, str]]:
        """(driver name, its options) from `driver`: "qemu", "fake", "libvirt" or "libvirt:URI"; the name is
        what comes before the first colon (a libvirt URI has colons of its own)."""
        from virtfleet.drivers.base import driver_names

        name, sep, rest = self.driver.partition(":")
        if name not in driver_names():
            raise ValueError(f"driver (--driver / VIRTFLEET_DRIVER): unknown driver {name!r} "
                             f"(known: {', '.join(driver_names())})")
        if name != "libvirt":
            if sep:
                raise ValueError(f"driver (--driver / VIRTFLEET_DRIVER): {name} takes no options ({self.driver!r})")
            return name, {}
        from virtfleet.drivers.libvirt.options import parse_options

        return name, parse_options(rest if sep else None, dict(os.environ)).as_extra()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'virtfleet.db'}"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / ADMIN_TOKEN_FILE

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def pools_dir(self) -> Path:
        """The data directory's own place for pools (the default pool, and any other an admin puts there)."""
        return self.data_dir / "pools"

    @property
    def import_dir(self) -> Path:
        return self.import_root or self.data_dir / "import"

    @property
    def export_dir(self) -> Path:
        return self.export_root or self.data_dir / "export"

    @property
    def default_pool(self) -> Path:
        return self.pools_dir / "default"
