"""qemu-img on untrusted or large images is bounded: huge claimed sizes are refused before conversion, conversions
run with CPU and memory limits and a time bound, stop when their job is cancelled or their daemon dies, and a full
destination reads as a full pool (InsufficientStorage), with nothing left behind in each case."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import qemu_img_pids, wait_until
from tests.tmpfs import tiny_tmpfs
from virtfleet.errors import InsufficientStorage, InvalidSpec
from virtfleet.jobs.runner import JobContext, JobRunner
from virtfleet.model.job import JobStatus
from virtfleet.storage import qemu_img
from virtfleet.storage.qemu_img import QemuImgError, inspect_untrusted
from virtfleet.store.db import Database

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is not installed")

MiB = 1 << 20
SRC = str(Path(__file__).parents[2] / "src")


@pytest.fixture(scope="module")
def slow_vhdx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 MiB on disk claiming 1 TiB: converting it walks the whole TiB (about 40 s of CPU)."""
    path = tmp_path_factory.mktemp("images") / "slow.vhdx"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", str(path), "1T"], check=True)
    return path


def test_an_image_claiming_more_than_the_limit_is_refused_naming_both_sizes(tmp_path: Path) -> None:
    huge = tmp_path / "huge.vhdx"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", str(huge), "60T"], check=True)
    started = time.monotonic()
    with pytest.raises(InvalidSpec) as refused:
        inspect_untrusted(huge, "vhdx", [tmp_path], max_virtual_size=4 << 40)
    assert refused.value.field == "virtual_size"
    assert refused.value.problem == ("huge.vhdx claims a virtual size of 60 TiB (65970697666560 bytes), more than "
                                    "the largest volume this server accepts (4 TiB)")
    assert time.monotonic() - started < 10


def test_a_conversion_runs_within_cpu_and_memory_limits(tmp_path: Path, slow_vhdx: Path) -> None:
    dst = tmp_path / "out.qcow2"
    seen: dict[str, str] = {}

    def look(percent: float) -> None:
        for pid in qemu_img_pids(dst):
            for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
                if line.startswith(("Max cpu time", "Max address space")):
                    seen[line[:26].strip()] = " ".join(line[26:].split()[:2])
        raise KeyboardInterrupt  # enough: stop the conversion

    with pytest.raises(KeyboardInterrupt):
        qemu_img.convert(slow_vhdx, "vhdx", dst, "qcow2", progress=look)
    timeout = qemu_img.convert_timeout(qemu_img.info(slow_vhdx, "vhdx"))
    assert 300 < timeout < 1200  # 5 minutes of slack, and a TiB walked at 2 GiB/s at the least
    cpu = int(seen["Max cpu time"].split()[0])
    assert cpu == int(timeout) + 1 or cpu == int(timeout)
    assert seen["Max address space"].split()[0] == str(qemu_img.CONVERT_ADDRESS_SPACE)
    assert not dst.exists() and qemu_img_pids(dst) == []


def test_a_conversion_past_its_time_bound_is_stopped(tmp_path: Path, slow_vhdx: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu_img, "CONVERT_BASE_SECONDS", 1.0)
    monkeypatch.setattr(qemu_img, "CONVERT_SCAN_RATE", 1 << 60)  # as if a TiB should take no time at all
    dst = tmp_path / "out.qcow2"
    started = time.monotonic()
    with pytest.raises(QemuImgError, match=r"qemu-img convert failed: no answer after 1(\.\d+)?s"):
        qemu_img.convert(slow_vhdx, "vhdx", dst, "qcow2")
    assert time.monotonic() - started < 10
    assert not dst.exists() and qemu_img_pids(dst) == []


def test_a_cancelled_job_kills_its_conversion(tmp_path: Path, slow_vhdx: Path) -> None:
    db = Database.sqlite(tmp_path / "db.sqlite")
    db.migrate()
    dst = tmp_path / "out.qcow2"

    async def scenario() -> tuple[str, float]:
        runner = JobRunner(db)

        async def work(context: JobContext) -> str:
            # A plain worker thread, as any job may use: the job's process scope still reaches its qemu-img.
            await asyncio.to_thread(qemu_img.convert, slow_vhdx, "vhdx", dst, "qcow2")
            return "converted"

        job = runner.submit("volume.import", "volume:x", "volume 'x'", work)
        assert await asyncio.to_thread(wait_until, lambda: qemu_img_pids(dst)), "qemu-img never started"
        started = time.monotonic()
        await runner.drain()  # what the daemon does when it stops
        return job.id, time.monotonic() - started

    job_id, took = asyncio.run(scenario())
    assert took < 5
    assert wait_until(lambda: not qemu_img_pids(dst), 5), "qemu-img outlived its job"
    assert wait_until(lambda: not dst.exists(), 5)
    job = db.get_job(job_id)
    assert job.status == JobStatus.FAILED and job.error_code == "interrupted"


def test_a_conversion_dies_with_its_daemon(tmp_path: Path, slow_vhdx: Path) -> None:
    dst = tmp_path / "out.qcow2"
    daemon = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from pathlib import Path
        from virtfleet.storage import qemu_img
        qemu_img.convert(Path({str(slow_vhdx)!r}), "vhdx", Path({str(dst)!r}), "qcow2")
    """)], env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert wait_until(lambda: qemu_img_pids(dst)), "qemu-img never started"
        daemon.kill()  # SIGKILL: no Python cleanup runs
        daemon.wait()
        assert wait_until(lambda: not qemu_img_pids(dst), 5), "qemu-img outlived the daemon"
    finally:
        daemon.kill()
        daemon.wait()


def test_a_conversion_into_a_full_file_system_is_insufficient_storage(tmp_path: Path) -> None:
    src = tmp_path / "data.raw"
    src.write_bytes(os.urandom(8 * MiB))  # incompressible, all allocated
    with tiny_tmpfs(tmp_path / "small", "2m") as small:
        with pytest.raises(InsufficientStorage, match="No space left on device"):
            qemu_img.convert(src, "raw", small / "out.qcow2", "qcow2")
        assert list(small.iterdir()) == []
