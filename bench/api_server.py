#!/usr/bin/env python3
"""One app under test for bench/api.py, in a process of its own: virtfleet's API on the fake driver, served by
uvicorn on 127.0.0.1, as shipped or (--no-auth) with the auth middleware taken out. Both sides of the comparison
start from this same script with the same argv but for that flag.

    python bench/api_server.py --data-dir DIR --port N [--no-auth]

It runs until SIGTERM (uvicorn then shuts down cleanly).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import cast

import uvicorn

from virtfleet.api.app import create_app
from virtfleet.api.auth import AuthMiddleware
from virtfleet.api.events import UvicornServer
from virtfleet.config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-auth", action="store_true", help="take the auth middleware out")
    args = parser.parse_args(argv)
    app = create_app(Settings(data_dir=args.data_dir, driver="fake", reconcile_interval=0.5,
                              metrics_interval=3600))
    if args.no_auth:
        # Starlette builds the middleware stack on the first request, so removing it here takes effect.
        app.user_middleware = [m for m in app.user_middleware if cast(object, m.cls) is not AuthMiddleware]
    server = UvicornServer(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning"), app)
    server.run()
    return 0 if server.started else 3


if __name__ == "__main__":
    raise SystemExit(main())
