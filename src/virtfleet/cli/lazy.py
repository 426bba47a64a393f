"""A command group that costs little to start: its entries' modules are imported only when one of their commands runs
(or its own help is shown), and text and flag parameters skip Typer's pydantic check.

Building every sub-command (80-odd Typer signatures, and the modules behind them) costs more than a whole
`virtfleet version`; the top-level help lists each lazy entry by a summary kept beside it, so it loads nothing."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import typer
from typer._click import Context
from typer._click.utils import make_default_short_help
from typer._coercion import PassThroughRuntimeParam
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.main import get_command_from_info, get_group_from_info
from typer.models import CommandInfo, TyperInfo

if TYPE_CHECKING:
    from typer import _click  # Typer's own copy of click: the types its hooks are declared with


@dataclass(frozen=True)
class Lazy:
    """A top-level command or group: where it lives ("module:attribute", a Typer app or a command function) and the
    first paragraph of its help, which the top-level help lists (a unit test checks it against the command)."""

    target: str
    summary: str


def take_as_given(command: _click.Command, ctx: _click.Context | None = None) -> None:
    """Let a command's (and its built sub-commands') single text and yes/no parameters through as click parses them.

    Typer checks every value through a pydantic TypeAdapter, built on first use, and importing pydantic costs more
    than all the rest of `virtfleet version`. Text needs no check (it is the text given) and a flag is parsed as
    True, False or None already; numbers, lists, paths and choices keep Typer's checks. Typer makes the check on first
    use into `_runtime_param`; filling that slot first with its own pass-through check is all this changes (the
    start-up unit tests fail if a Typer release stops honouring it)."""
    help_option = command.get_help_option(ctx or Context(command))  # made on first use too, then kept
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if (isinstance(param, TyperOption | TyperArgument) and param._runtime_param is None
                and param.type_descriptor.annotation in (str, bool) and param.nargs == 1 and not param.multiple):
            param._runtime_param = PassThroughRuntimeParam(
                annotation=param.type_descriptor.annotation, parameter_info=param.type_descriptor.parameter_info)
    subs = command.commands if isinstance(command, TyperGroup) else {}
    for sub in subs.built().values() if isinstance(subs, _Commands) else subs.values():
        take_as_given(sub)


class _Commands(MutableMapping[str, "_click.Command"]):
    """A group's commands by name, in listing order; a lazy one is built when it is first looked up. Typer's own
    lookups (running a command, "Did you mean ...?", completion) go through this mapping and so see every name."""

    def __init__(self, names: list[str], loaded: dict[str, _click.Command],
                 load: Callable[[str], _click.Command]) -> None:
        self._names = names
        self._loaded = loaded
        self._load = load

    def loaded(self, name: str) -> bool:
        return name in self._loaded

    def built(self) -> dict[str, _click.Command]:
        """The commands built so far (looking at them all through the mapping would build every one)."""
        return dict(self._loaded)

    def __getitem__(self, name: str) -> _click.Command:
        if name not in self._loaded:
            if name not in self._names:
                raise KeyError(name)
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def __setitem__(self, name: str, command: _click.Command) -> None:
        if name not in self._names:
            self._names.append(name)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)


class LazyGroup(TyperGroup):
    """A Typer group with entries imported on first use. Subclasses set `lazy_commands` (listed before the group's
    own commands, where Typer lists commands) and `lazy_groups` (listed after them, where Typer lists groups)."""

    lazy_commands: ClassVar[dict[str, Lazy]] = {}
    lazy_groups: ClassVar[dict[str, Lazy]] = {}

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        own = dict(self.commands)
        self.commands = self._commands = _Commands([*self.lazy_commands, *own, *self.lazy_groups], own, self._load)

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        take_as_given(self, ctx)  # the options Typer adds after building the group (shell completion) included
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return list(self.commands)  # the names alone: listing them loads nothing

    def _load(self, name: str) -> _click.Command:
        """The click command for an entry, built as `add_typer` / `command()` on this group would have built it."""
        entry = self.lazy_commands.get(name) or self.lazy_groups[name]
        module, _, attribute = entry.target.partition(":")
        target = getattr(importlib.import_module(module), attribute)
        if isinstance(target, typer.Typer):
            command: _click.Command = get_group_from_info(
                TyperInfo(target, name=name), pretty_exceptions_short=True, suggest_commands=self.suggest_commands,
                rich_markup_mode=self.rich_markup_mode)
        else:
            command = get_command_from_info(CommandInfo(name, callback=target), pretty_exceptions_short=True,
                                            rich_markup_mode=self.rich_markup_mode)
        take_as_given(command)
        return command

    def summary(self, name: str, limit: int) -> str | None:
        """The help's line for a command, None if it is hidden; a lazy entry not loaded yet stays unloaded."""
        if not self._commands.loaded(name):
            entry = self.lazy_commands.get(name) or self.lazy_groups[name]
            return make_default_short_help(entry.summary, limit)
        command = self.commands[name]
        return None if command.hidden else command.get_short_help_str(limit)

    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, text) for name in names if (text := self.summary(name, limit)) is not None]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
