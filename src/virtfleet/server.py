"""One virtfleet server on one host: store + jobs + local agent + driver, wired together.

`virtfleet serve` runs this inside the API process; tests build it on the fake driver.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from virtfleet.agent.metrics import MetricsSampler
from virtfleet.agent.reconcile import Reconciler
from virtfleet.auth.service import AuthService
from virtfleet.config import Settings
from virtfleet.drivers.base import Driver, DriverConfig, create_driver
from virtfleet.drivers.fake import CAPABILITIES_OPTION
from virtfleet.events import EventBus
from virtfleet.images.catalog import Builder, ImageCatalog
from virtfleet.jobs.adopt import AdoptService
from virtfleet.jobs.exports import ExportService
from virtfleet.jobs.imports import ImportService
from virtfleet.jobs.networks import NetworkService
from virtfleet.jobs.recovery import Recovery
from virtfleet.jobs.runner import JobRunner
from virtfleet.jobs.snapshots import SnapshotService
from virtfleet.jobs.storage import StorageService
from virtfleet.jobs.vm_create import VmCreator
from virtfleet.jobs.vm_delete import VmDeleter
from virtfleet.jobs.vm_disks import DiskResolver, vm_using
from virtfleet.jobs.vm_templates import VmTemplates
from virtfleet.jobs.vms import VmService, host_name
from virtfleet.private_files import make_private_dir, tighten
from virtfleet.store.db import Database
from virtfleet.store.intent_repo import IntentLog

log = logging.getLogger(__name__)

SEEDS_DIR = "seeds"  # cloud-init seed disks, rebuilt at each VM start
NETWORKS_DIR = "networks"  # dnsmasq's configuration, leases and logs


def private_state_dirs(settings: Settings) -> None:
    """The data directory and the directories virtfleet keeps in it are 0700: made so, or tightened at each start
    (older versions left them 0755). A pool at a path of the admin's choosing is left as it is."""
    make_private_dir(settings.data_dir)
    make_private_dir(settings.default_pool)
    for directory in (settings.default_pool.parent, settings.run_dir, settings.images_dir,
                      settings.data_dir / SEEDS_DIR, settings.data_dir / NETWORKS_DIR):
        tighten(directory)


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
    vm_creator: VmCreator
    vm_deleter: VmDeleter
    templates: VmTemplates
    snapshots: SnapshotService
    reconciler: Reconciler
    sampler: MetricsSampler
    auth: AuthService
    events: EventBus
    imports: ImportService
    exports: ExportService
    adopt: AdoptService

    @classmethod
    def build(cls, settings: Settings, *, builders: Mapping[str, Builder] | None = None) -> Server:
        private_state_dirs(settings)
        db = Database(settings.db_url)
        db.migrate()
        events = EventBus()
        db.listener = events.publish
        driver_name, driver_options = settings.driver_setting()
        if settings.fake_capabilities:
            driver_options = {**driver_options, CAPABILITIES_OPTION: settings.fake_capabilities}
        driver = create_driver(driver_name, DriverConfig(settings.run_dir, settings.qemu_binary, driver_options))
        runner = JobRunner(db)
        intents = IntentLog(db)
        recovery = Recovery(db, intents)
        images = ImageCatalog(settings.images_dir, builders)
        host = host_name()
        storage = StorageService(db, runner, settings.data_dir, lambda path: vm_using(db, path), intents,
                                 max_volume_size=settings.max_volume_size, pool_roots=settings.pool_roots,
                                 import_allow=settings.import_allow)
        storage.register_recovery(recovery)
        storage.ensure_default_pool(settings.default_pool)
        disks = DiskResolver(db, storage, settings.data_dir / SEEDS_DIR)
        networks = NetworkService(db, settings.data_dir / NETWORKS_DIR)
        vms = VmService(db, driver, runner, images, host=host, disks=disks, networks=networks)
        vm_creator = VmCreator(vms, storage, runner, intents)
        vm_creator.register_recovery(recovery)
        vm_deleter = VmDeleter(db, driver, runner, disks, networks, storage, intents)
        vm_deleter.register_recovery(recovery)
        templates = VmTemplates(db, storage, runner, vm_creator)
        snapshots = SnapshotService(db, driver, runner, storage, disks, images, vms.boot_spec, intents)
        snapshots.register_recovery(recovery)
        reconciler = Reconciler(db, driver, runner, host, settings.reconcile_interval)
        sampler = MetricsSampler(db, driver, settings.metrics_interval)
        auth = AuthService(db)
        auth.ensure_local_admin(settings.admin_token_path)
        imports = ImportService(db, runner, storage, vms, networks, intents, import_dir=settings.import_dir,
                                devices=settings.import_devices, reports_dir=settings.data_dir / "imports")
        imports.register_recovery(recovery)
        exports = ExportService(runner, vms, settings.export_dir)
        adopt = AdoptService(db, driver, runner, storage, disks, networks, intents, host=host)
        adopt.register_recovery(recovery)
        return cls(settings, db, driver, runner, recovery, images, storage, networks, vms, vm_creator, vm_deleter,
                   templates, snapshots, reconciler, sampler, auth, events, imports, exports, adopt)

    async def start(self) -> None:
        for problem in [*await self.storage.activate_all(), *await self.networks.activate_all()]:
            log.warning("%s", problem)
        # Before anything else reads the store: operations the last daemon left half done are finished or rolled
        # back, so the jobs and the reconcile pass below see one consistent picture.
        for problem in await self.recovery.run():
            log.error("%s", problem)
        for leftover in await asyncio.to_thread(self.imports.remove_partial_uploads):
            log.warning("import uploads: removed %s, left by an upload the last daemon did not finish", leftover)
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
