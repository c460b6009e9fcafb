"""The command line: a thin shell over the library. One module per command, found in a table."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Any

import click

from edgetune._version import __version__
from edgetune.errors import EdgetuneError

__all__ = ["cli", "main"]

COMMANDS: dict[str, str] = {
    "agent": "edgetune.cli.bench:agent",
    "analyze": "edgetune.cli.optimize:analyze",
    "bench": "edgetune.cli.bench:bench",
    "bundle": "edgetune.cli.bundle:bundle",
    "cascade": "edgetune.cli.cascade:cascade",
    "demo": "edgetune.cli.demo:demo",
    "diverge": "edgetune.cli.bench:diverge",
    "evaluate": "edgetune.cli.evaluate:evaluate",
    "fit": "edgetune.cli.inspect:fit",
    "inspect": "edgetune.cli.inspect:inspect",
    "keygen": "edgetune.cli.bundle:keygen",
    "optimize": "edgetune.cli.optimize:optimize",
    "ota": "edgetune.cli.ota:ota",
    "quantize": "edgetune.cli.quantize:quantize",
    "serve": "edgetune.cli.cascade:serve",
}


def _available(target: str) -> bool:
    return importlib.util.find_spec(target.partition(":")[0]) is not None


class _LazyGroup(click.Group):
    """Imports a command's module only when that command is used or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, target in COMMANDS.items() if _available(target))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not _available(target):
            return None
        module_name, _, attr = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module_name), attr)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgetuneError as exc:
            raise _Failure(exc) from exc


class _Failure(click.ClickException):
    """An edgetune error shown as one line, with the error's own exit code."""

    def __init__(self, error: EdgetuneError) -> None:
        super().__init__(str(error))
        setattr(self, "exit_code", error.exit_code)  # noqa: B010 - a class variable in click

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@click.group(cls=_LazyGroup)
@click.version_option(__version__, prog_name="edgetune")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Take a trained model to an edge device: quantize, validate, benchmark, ship."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def main() -> None:
    cli(prog_name="edgetune")
