"""The CLI starts cheaply: which modules `virtfleet --help`, `version` and `vm list --json` load (a list of modules,
not a timing), and the lazily loaded commands are the ones the top-level help describes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from virtfleet.cli.lazy import LazyGroup
from virtfleet.cli.main import app

SRC = Path(__file__).resolve().parents[2] / "src"
# What start-up must not pay for: each costs more than a whole `virtfleet version` (see bench/cli_start.py).
HEAVY = ("httpx", "rich", "pydantic", "sqlalchemy", "fastapi", "uvicorn", "yaml", "virtfleet.server",
         "virtfleet.drivers", "virtfleet.model", "virtfleet.api")
# Running `virtfleet ARGS` in a fresh interpreter, then printing the modules it loaded.
PROBE = """
import json, sys
sys.argv = ["virtfleet", *sys.argv[1:]]
from virtfleet.cli.main import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def loaded_by(*args: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
                                 "VIRTFLEET_URL": "http://127.0.0.1:9"})  # port 9: nothing listens
    modules: list[str] = json.loads(result.stderr.strip().splitlines()[-1])
    return modules


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(f"{h}.") for h in HEAVY)]


@pytest.mark.parametrize("args", [["--help"], ["version"], ["vm", "--help"], ["vm", "list", "--json"]])
def test_start_up_loads_no_heavy_module(args: list[str]) -> None:
    modules = loaded_by(*args)
    assert "virtfleet.cli.main" in modules
    assert heavy(modules) == []


def test_a_command_loads_its_own_group_alone() -> None:
    modules = loaded_by("version")
    assert not [m for m in modules if m.startswith("virtfleet.cli.") and m not in
                ("virtfleet.cli.main", "virtfleet.cli.lazy", "virtfleet.cli.output")]
    assert "virtfleet.cli.vm" in loaded_by("vm", "list", "--json")
    assert "virtfleet.cli.storage" not in loaded_by("vm", "list", "--json")


def test_the_top_level_help_describes_each_lazy_command_as_its_own_help_does() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, LazyGroup)
    for name, entry in {**group.lazy_commands, **group.lazy_groups}.items():
        command = group.commands[name]  # built now
        assert command.name == name
        assert command.get_short_help_str(limit=10_000) == entry.summary, name


def test_every_command_is_listed_and_runs_its_help() -> None:
    listed = CliRunner().invoke(app, ["--help"])
    assert listed.exit_code == 0
    group = typer.main.get_command(app)
    assert isinstance(group, LazyGroup)
    names = list(group.commands)
    assert names[:5] == ["demo", "audit", "events", "import", "export"]
    assert {"version", "serve", "host", "vm", "token"} <= set(names)
    for name in names:
        assert f"\n  {name} " in listed.stdout
        shown = CliRunner().invoke(app, [name, "--help"])
        assert shown.exit_code == 0 and "Usage:" in shown.stdout, (name, shown.output)


def test_a_mistyped_group_is_suggested_though_not_loaded() -> None:
    result = CliRunner().invoke(app, ["vms"])
    assert result.exit_code == 2 and "Did you mean 'vm'" in result.output


def test_shell_completion_completes_lazy_groups_and_their_commands() -> None:
    def complete(words: str) -> str:
        env = {"_VIRTFLEET_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()))}
        return CliRunner().invoke(app, [], env=env, prog_name="virtfleet").output

    assert "volume" in complete("virtfleet vo").split()
    assert {"list", "show", "start"} <= set(complete("virtfleet vm ").split())


def test_text_options_and_arguments_skip_typers_pydantic_check_numbers_keep_it() -> None:
    result = CliRunner().invoke(app, ["vm", "logs", "x", "--bytes", "many"])
    assert result.exit_code == 2 and "Invalid value for '--bytes'" in result.output  # still refused
    result = CliRunner().invoke(app, ["--url", "http://127.0.0.1:9", "vm", "show", "x"])
    assert result.exit_code == 1 and "cannot reach virtfleet at http://127.0.0.1:9" in result.stderr
