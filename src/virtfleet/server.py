"""One virtfleet server on one host: store + jobs + local agent + driver, wired together.

`virtfleet serve` runs this inside the API process; tests build it on the fake driver.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from virtfleet.agent.metrics import MetricsSampler
from virtfleet.agent.reconcile import Reconciler
from virtfleet.auth.service import AuthService
from virtfleet.config import Settings
from virtfleet.drivers.base import Driver, DriverConfig, create_driver
from virtfleet.events import EventBus
from virtfleet.images.catalog import Builder, ImageCatalog
from virtfleet.jobs.exports import ExportService
from virtfleet.jobs.imports import ImportService
from virtfleet.jobs.networks import NetworkService
from virtfleet.jobs.recovery import Recovery
from virtfleet.jobs.runner import JobRunner
from virtfleet.jobs.snapshots import SnapshotService
from virtfleet.jobs.storage import StorageService
from virtfleet.jobs.vm_disks import DiskResolver, vm_using
from virtfleet.jobs.vm_templates import VmTemplates
from virtfleet.jobs.vms import VmService, host_name
from virtfleet.store.db import Database
from virtfleet.store.intent_repo import IntentLog

log = logging.getLogger(__name__)


@dataclass
class Server:
    settings: Settings
    db: Database
    driver: Driver
    runner: JobRunner
    recovery: Recovery
    images: ImageCatalog
    storage: StorageService
    networks: NetworkService
    vms: VmService
    templates: VmTemplates
    snapshots: SnapshotService
    reconciler: Reconciler
    sampler: MetricsSampler
    auth: AuthService
    events: EventBus
    imports: ImportService
    exports: ExportService

    @classmethod
    def build(cls, settings: Settings, *, builders: Mapping[str, Builder] | None = None) -> Server:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.default_pool.mkdir(parents=True, exist_ok=True)
        db = Database(settings.db_url)
        db.migrate()
        events = EventBus()
        db.listener = events.publish
        driver = create_driver(settings.driver, DriverConfig(settings.run_dir, settings.qemu_binary))
        runner = JobRunner(db)
        intents = IntentLog(db)
        recovery = Recovery(db, intents)
        images = ImageCatalog(settings.images_dir, builders)
        host = host_name()
        storage = StorageService(db, runner, settings.data_dir, lambda path: vm_using(db, path), intents)
        storage.register_recovery(recovery)
        storage.ensure_default_pool(settings.default_pool)
        disks = DiskResolver(db, storage, settings.data_dir / "seeds")
        networks = NetworkService(db, settings.data_dir / "networks")
        vms = VmService(db, driver, runner, images, host=host, disks=disks, networks=networks)
        templates = VmTemplates(db, vms, storage, runner)
        snapshots = SnapshotService(db, driver, runner, storage, disks, images, vms.boot_spec)
        reconciler = Reconciler(db, driver, runner, host, settings.reconcile_interval)
        sampler = MetricsSampler(db, driver, settings.metrics_interval)
        auth = AuthService(db)
        auth.ensure_local_admin(settings.admin_token_path)
        imports = ImportService(db, runner, storage, vms, networks, intents, import_dir=settings.import_dir,
                                devices=settings.import_devices, reports_dir=settings.data_dir / "imports")
        imports.register_recovery(recovery)
        exports = ExportService(runner, vms, settings.export_dir)
        return cls(settings, db, driver, runner, recovery, images, storage, networks, vms, templates, snapshots,
                   reconciler, sampler, auth, events, imports, exports)

    async def start(self) -> None:
        for problem in [*await self.storage.activate_all(), *await self.networks.activate_all()]:
            log.warning("%s", problem)
        # Before anything else reads the store: operations the last daemon left half done are finished or rolled
        # back, so the jobs and the reconcile pass below see one consistent picture.
        for problem in await self.recovery.run():
            log.error("%s", problem)
        await self.reconciler.recover()
        info = await self.driver.host_info()
        if not info.kvm_usable:
            log.warning("%s", info.kvm_reason)
        self.reconciler.start()
        self.sampler.start()

    async def stop(self) -> None:
        self.events.close()
        await self.sampler.stop()
        await self.reconciler.stop()
        await self.runner.drain()
        await self.driver.close()
        self.db.close()
