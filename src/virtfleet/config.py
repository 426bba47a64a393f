"""Settings for one virtfleet server, from the environment (VIRTFLEET_*) with safe defaults."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8470
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
ADMIN_TOKEN_FILE = "admin.token"  # in the data directory: the local admin's API token (mode 0600)


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


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    driver: str = "qemu"
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    reconcile_interval: float = 1.0
    metrics_interval: float = 10.0  # how often each running VM's usage is sampled (the last hour is kept)
    qemu_binary: str = "qemu-system-x86_64"
    # v2v: the only server-side places `virtfleet import` reads and `virtfleet export` writes (admin-set), and the
    # host block devices an import may read (Xen phy:, libvirt type='block'), as glob patterns.
    import_root: Path | None = None
    export_root: Path | None = None
    import_devices: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        values: dict[str, object] = {
            "data_dir": Path(env.get("VIRTFLEET_DATA_DIR", str(default_data_dir()))),
            "driver": env.get("VIRTFLEET_DRIVER", "qemu"),
            "database_url": env.get("VIRTFLEET_DATABASE_URL", ""),
            "qemu_binary": env.get("VIRTFLEET_QEMU", "qemu-system-x86_64"),
            "metrics_interval": float(env.get("VIRTFLEET_METRICS_INTERVAL", "10")),
            "import_root": Path(env["VIRTFLEET_IMPORT_DIR"]) if env.get("VIRTFLEET_IMPORT_DIR") else None,
            "export_root": Path(env["VIRTFLEET_EXPORT_DIR"]) if env.get("VIRTFLEET_EXPORT_DIR") else None,
            "import_devices": tuple(p for p in env.get("VIRTFLEET_IMPORT_DEVICES", "").split(",") if p.strip()),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

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
    def import_dir(self) -> Path:
        return self.import_root or self.data_dir / "import"

    @property
    def export_dir(self) -> Path:
        return self.export_root or self.data_dir / "export"

    @property
    def default_pool(self) -> Path:
        return self.data_dir / "pools" / "default"
