"""The ``lipsync`` command. Each subcommand lives in its own module and is registered here."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from lipsync import __version__
from lipsync.cli._common import ERROR_EXIT, echo_error
from lipsync.errors import LipSyncError
from lipsync.malloc_tuning import tune_malloc

# name -> module:attribute; imported lazily so `lipsync --version` stays fast and one broken
# optional dependency does not take every subcommand down with it.
_SUBCOMMANDS = {
    "probe": "lipsync.cli.probe:probe",
    "models": "lipsync.cli.models:models",
    "track": "lipsync.cli.track:track",
    "run": "lipsync.cli.run:run",
    "serve": "lipsync.cli.serve:serve",
    "worker": "lipsync.cli.worker:worker",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _SUBCOMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=_LazyGroup)
@click.version_option(__version__, prog_name="lipsync")
@click.option("--log-level", default=None, help="Logging level (default: LOG_LEVEL or INFO).")
def cli(log_level: str | None) -> None:
    """Lip-sync faces in a video to a new audio track."""
    from lipsync.config import Settings

    level = log_level or Settings().log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Console entry point: user errors become one clear line and exit code 2, never a traceback."""
    tune_malloc()  # before any thread starts: see lipsync.malloc_tuning
    try:
        # A command that already printed its errors (one line each) ends with ctx.exit(ERROR_EXIT), which
        # click hands back as the return value when not in standalone mode.
        status = cli.main(standalone_mode=False)
        if isinstance(status, int) and status:
            sys.exit(status)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        # One line, like every other error: what was wrong, and where to look.
        command = exc.ctx.command_path if exc.ctx else "lipsync"
        click.echo(f"error (usage): {exc.format_message()} (see '{command} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error (failed): {exc.format_message()}", err=True)
        sys.exit(ERROR_EXIT)
    except LipSyncError as exc:
        echo_error(exc)
        sys.exit(ERROR_EXIT)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
