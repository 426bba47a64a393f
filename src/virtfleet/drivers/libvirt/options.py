"""The libvirt driver's settings: which libvirt to talk to, and as whom. No libvirt import here (config uses it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

DEFAULT_URI = "qemu:///system"
# What a libvirt URI scheme names (the driver part of "driver+transport"): the ones this driver boots q35 on.
KNOWN_SCHEMES = ("qemu", "test")


class LibvirtOptions(BaseModel):
    """`--driver libvirt[:URI]` (or VIRTFLEET_DRIVER); the credentials from VIRTFLEET_LIBVIRT_USERNAME and
    VIRTFLEET_LIBVIRT_PASSWORD when the URI's transport asks for them (e.g. qemu+tcp with SASL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(default=DEFAULT_URI, max_length=1024)
    username: str | None = Field(default=None, min_length=1, max_length=256)
    password: SecretStr | None = Field(default=None, max_length=1024)

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        scheme, sep, rest = value.partition(":")
        if not sep or not rest.startswith("//") or any(ord(ch) < 33 for ch in value):
            raise ValueError(f"{value!r} is not a libvirt URI such as {DEFAULT_URI} or test:///default")
        driver = scheme.split("+", 1)[0]
        if driver not in KNOWN_SCHEMES:
            raise ValueError(f"{value!r}: the libvirt driver runs QEMU domains; use a qemu:// URI "
                             f"(or test:///default for libvirt's mock)")
        return value

    @property
    def scheme(self) -> str:
        """"qemu" or "test" (without the transport)."""
        return self.uri.split(":", 1)[0].split("+", 1)[0]

    @property
    def local(self) -> bool:
        """True when libvirt runs on this host (its files and sockets are ours to open)."""
        scheme = self.uri.split(":", 1)[0]
        host = self.uri.split("://", 1)[1].split("/", 1)[0]
        return "+" not in scheme.replace("+unix", "") and host in ("", "localhost")

    def as_extra(self) -> dict[str, str]:
        extra = {"uri": self.uri}
        if self.username is not None:
            extra["username"] = self.username
        if self.password is not None:
            extra["password"] = self.password.get_secret_value()
        return extra


def parse_options(uri: str | None, env: dict[str, str] | None = None) -> LibvirtOptions:
    """The options from the part of the driver setting after "libvirt:" (None: the default URI); ValueError
    naming the setting when they are bad."""
    env = env or {}
    try:
        return LibvirtOptions.model_validate({
            "uri": uri if uri is not None else DEFAULT_URI,
            "username": env.get("VIRTFLEET_LIBVIRT_USERNAME") or None,
            "password": env.get("VIRTFLEET_LIBVIRT_PASSWORD") or None,
        })
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise ValueError(f"driver (--driver / VIRTFLEET_DRIVER) libvirt: {problems}") from None
