"""The host's guest images: where they live, which can be built, and how a VM spec turns into a BootImage."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from virtfleet.drivers.base import BootImage
from virtfleet.errors import InvalidSpec, NotFound
from virtfleet.images.tiny import BuiltImage, ImageBuildError, default_cmdline, host_tsc_khz, load_image
from virtfleet.model.vm import VmSpec

Builder = Callable[..., BuiltImage]  # (dest, *, progress=...) -> BuiltImage


def _tiny_builder(dest: Path, *, progress: Callable[[str], None] | None = None) -> BuiltImage:
    from virtfleet.images.tiny import build_tiny_image

    return build_tiny_image(dest, progress=progress)


DEFAULT_BUILDERS: Mapping[str, Builder] = {"tiny": _tiny_builder}


@dataclass(frozen=True)
class ImageInfo:
    name: str
    built: bool
    buildable: bool
    kernel_release: str = ""
    size_bytes: int = 0
    path: str = ""


@cache
def _host_khz() -> int | None:
    return host_tsc_khz()


class ImageCatalog:
    def __init__(self, root: Path, builders: Mapping[str, Builder] | None = None) -> None:
        self.root = root
        self.builders = dict(DEFAULT_BUILDERS if builders is None else builders)

    def _load(self, name: str) -> BuiltImage | None:
        """A usable built image: missing, broken or (for images we build) stale ones count as not built."""
        try:
            image = load_image(self.root / name)
        except ImageBuildError:
            return None
        return None if image.stale and name in self.builders else image

    def list(self) -> list[ImageInfo]:
        names = set(self.builders)
        if self.root.is_dir():
            names.update(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return [self.info(name) for name in sorted(names)]

    def info(self, name: str) -> ImageInfo:
        built = self._load(name)
        if built is None:
            if name not in self.builders:
                raise NotFound("image", name)
            return ImageInfo(name, built=False, buildable=True)
        size = sum(p.stat().st_size for p in (built.kernel, built.initrd) if p.exists())
        return ImageInfo(name, True, name in self.builders, built.kernel_release, size, str(self.root / name))

    def require_buildable(self, name: str) -> None:
        if name not in self.builders:
            raise NotFound("image builder", name)

    def build(self, name: str, progress: Callable[[str], None] | None = None) -> BuiltImage:
        """Build (or rebuild) an image; the builder writes atomically, so a failure keeps the old one."""
        self.require_buildable(name)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.builders[name](self.root / name, progress=progress)

    def delete(self, name: str) -> None:
        if self._load(name) is None:
            raise NotFound("image", name)
        shutil.rmtree(self.root / name)

    def built(self, name: str) -> BuiltImage:
        built = self._load(name)
        if built is None:
            raise NotFound("built image", name)
        return built

    def check_spec(self, spec: VmSpec) -> BuiltImage | None:
        """The built image a spec names (None: it boots from a disk); refuses a missing one with the fix."""
        if spec.image is None:
            return None
        built = self._load(spec.image)
        if built is None:
            hint = f"; build it with: virtfleet image build {spec.image}" if spec.image in self.builders else ""
            if (self.root / spec.image / "image.json").is_file():
                raise InvalidSpec("image", f"image '{spec.image}' was built by an older virtfleet{hint}")
            raise InvalidSpec("image", f"no built image named '{spec.image}'{hint}")
        return built

    def boot_image(self, spec: VmSpec) -> BootImage | None:
        built = self.check_spec(spec)
        if built is None:
            return None
        parts = [default_cmdline(spec.machine, _host_khz()), f"virtfleet.hostname={spec.name}", spec.kernel_args]
        return BootImage(built.name, built.kernel, built.initrd, " ".join(p for p in parts if p), built.efi_kernel)
