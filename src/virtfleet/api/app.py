"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI

from virtfleet import __version__
from virtfleet.api import errors, routes, users
from virtfleet.api.adopt import router as adopt_router
from virtfleet.api.auth import AuthMiddleware
from virtfleet.api.console import router as console_router
from virtfleet.api.events import router as events_router
from virtfleet.api.imports import router as imports_router
from virtfleet.api.limits import BodyLimitMiddleware
from virtfleet.api.metrics import router as metrics_router
from virtfleet.api.networks import router as networks_router
from virtfleet.api.storage import router as storage_router
from virtfleet.api.web import router as web_router
from virtfleet.config import Settings
from virtfleet.images.catalog import Builder
from virtfleet.server import Server


def create_app(settings: Settings, *, builders: Mapping[str, Builder] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server = Server.build(settings, builders=builders)
        app.state.server = server
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(
        title="virtfleet",
        version=__version__,
        description="Manage QEMU/KVM virtual machines: VMs, jobs, images, consoles.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(AuthMiddleware)
    app.add_middleware(BodyLimitMiddleware)  # added last, so it runs first: before authentication
    app.include_router(users.router, prefix="/api/v1")
    # Storage and networks first: their /vms/{ref}/snapshots and /vms/{ref}/nics must win over the generic
    # POST /vms/{ref}/{action}.
    app.include_router(storage_router, prefix="/api/v1")
    app.include_router(imports_router, prefix="/api/v1")  # POST /vms/{ref}/export before /vms/{ref}/{action}
    app.include_router(networks_router, prefix="/api/v1")
    app.include_router(metrics_router, prefix="/api/v1")
    app.include_router(adopt_router, prefix="/api/v1")
    app.include_router(routes.router, prefix="/api/v1")
    app.include_router(console_router, prefix="/api/v1")
    app.include_router(events_router, prefix="/api/v1")
    app.include_router(web_router)  # the web UI at / and /ui/
    return app
