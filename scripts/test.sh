#!/usr/bin/env bash
# Install everything the tests need, then run the checks and all three test tiers (unit, functional, integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
.venv/bin/ruff check src tests bench
.venv/bin/mypy src/virtfleet
.venv/bin/python -m pytest -q -m "" tests "$@"
