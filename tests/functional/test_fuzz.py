"""Schemathesis generates requests from the OpenAPI document (valid and invalid); none may get a 500.

Run as an operator over the whole API (pools, networks and users then answer 403: those would touch the host or
are covered below), and as an admin over users, tokens and the audit log.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.functional.conftest import LiveServer

ST = Path(sys.executable).with_name("st")


def _fuzz(url: str, token: str, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ST), "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "12",
         "--seed", "1", "--workers", "1", "--request-timeout", "30", "--header", f"Authorization: Bearer {token}",
         *extra],
        capture_output=True, text=True, timeout=600, check=False, cwd=cache,  # its cache stays out of the checkout
    )


@pytest.mark.skipif(not ST.exists() and shutil.which("st") is None, reason="schemathesis is not installed")
def test_generated_requests_never_get_a_server_error(live_server: LiveServer, tmp_path: Path) -> None:
    url, admin, headers = live_server.url, live_server.token, live_server.auth
    httpx.post(f"{url}/api/v1/users", json={"name": "fuzzer", "role": "operator"}, headers=headers)
    operator = httpx.post(f"{url}/api/v1/tokens", json={"name": "fuzz", "user": "fuzzer"}, headers=headers)
    # The event stream never ends: a request/response fuzzer would wait on it forever (it has no parameters).
    whole = _fuzz(url, operator.json()["token"], tmp_path,
                  "--exclude-path-regex", "^/api/v1/(users|tokens|auth/logout|events$)")
    assert whole.returncode == 0, whole.stdout[-6000:]
    users = _fuzz(url, admin, tmp_path, "--include-path-regex", "^/api/v1/(users|tokens|audit)",
                  "--exclude-path", "/api/v1/tokens/{token_id}")  # revoking our own token would end the run
    assert users.returncode == 0, users.stdout[-6000:]
    # The run really exercised the API (a filter matching nothing would also exit 0).
    generated = [int(n) for n in re.findall(r"(\d+) generated", whole.stdout + users.stdout)]
    assert len(generated) == 2 and generated[0] > 1000 and generated[1] > 50, (whole.stdout[-800:], users.stdout[-800:])
