"""Where pools may be: strictly below a pool root, never in a system tree or in the data directory outside its pool
areas, spelled plainly (no control characters, no '..', no symbolic links), never overlapping another pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtfleet.errors import InvalidSpec
from virtfleet.storage.pool_paths import check_pool_path


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(a pool root an admin allowed, the data directory), both real directories under tmp_path."""
    root, data = tmp_path / "srv", tmp_path / "data"
    (data / "pools" / "default").mkdir(parents=True)
    (data / "run").mkdir()
    root.mkdir()
    return root, data


def check(path: Path | str, root: Path, data: Path, *, roots: list[Path] | None = None,
          existing: list[Path] | None = None) -> None:
    check_pool_path(str(path), roots=[root] if roots is None else roots, data_dir=data,
                    internal=[data / "pools", data / "mnt"], existing=existing or [data / "pools" / "default"])


def refusal(path: Path | str, root: Path, data: Path, **kwargs: list[Path]) -> str:
    with pytest.raises(InvalidSpec) as refused:
        check(path, root, data, **kwargs)
    assert refused.value.field == "path"
    return refused.value.problem


def test_below_a_root_or_in_the_data_directory_pools_is_accepted(layout: tuple[Path, Path]) -> None:
    root, data = layout
    (root / "existing").mkdir()
    for path in (root / "new", root / "existing", root / "deep" / "er", data / "pools" / "fast", data / "mnt" / "nfs"):
        check(path, root, data)
    check("/opt/vm-images", root, data, roots=[Path("/")])  # an admin may draw the roots wide...


def test_system_trees_stay_out_whatever_the_roots(layout: tuple[Path, Path]) -> None:
    root, data = layout
    for path in ("/var/spool/cron/crontabs", "/etc/cron.d/x", "/usr/lib/x", "/var/lib/dpkg", "/boot/x", "/"):
        assert "system directory" in refusal(path, root, data, roots=[Path("/")]), path  # ...never over the system
    assert "system directory" in refusal("/var/lib", root, data, roots=[Path("/")])  # it holds /var/lib/dpkg
    assert "system directory" in refusal("/var", root, data, roots=[Path("/")])


def test_outside_the_roots_is_refused_and_says_how_to_allow_it(layout: tuple[Path, Path]) -> None:
    root, data = layout
    for path in ("/var/lib/libvirt/images", "/home/someone/pool", "/tmp/pool", "/srv/vm", str(root)):  # noqa: S108
        problem = refusal(path, root, data)
        assert "not below a pool root" in problem and "VIRTFLEET_POOL_ROOTS" in problem, path


def test_the_data_directory_is_only_a_pool_place_in_its_pool_areas(layout: tuple[Path, Path]) -> None:
    root, data = layout
    wide = [data.parent]  # a root that holds the data directory does not open all of it
    assert "in virtfleet's data directory" in refusal(data / "run" / "pool", root, data, roots=wide)
    assert "in virtfleet's data directory" in refusal(data / "newdir", root, data, roots=wide)
    assert "holds virtfleet's own data directory" in refusal(data, root, data, roots=wide)
    assert "holds virtfleet's own data directory" in refusal(data.parent, root, data, roots=[data.parent.parent])


def test_paths_must_be_spelled_plainly(layout: tuple[Path, Path]) -> None:
    root, data = layout
    assert "control characters" in refusal(f"{root}/a\nb", root, data)
    assert "control characters" in refusal(f"{root}/a\tb", root, data)
    for spelled in (f"{root}/a/../b", f"{root}/./a", f"{root}//a", f"{root}/a/", "relative/pool"):
        assert "absolute path without" in refusal(spelled, root, data), spelled
    (root / "link").symlink_to(data / "run")
    assert "symbolic link" in refusal(root / "link" / "pool", root, data)


def test_pools_do_not_overlap(layout: tuple[Path, Path]) -> None:
    root, data = layout
    existing = [root / "a"]
    for path in (root / "a", root / "a" / "inner"):
        assert "overlaps the pool" in refusal(path, root, data, existing=existing)
    assert "overlaps the pool" in refusal(root / "b", root, data, roots=[root], existing=[root / "b" / "c"])
