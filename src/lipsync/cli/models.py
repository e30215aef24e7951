"""``lipsync models list | download | verify``."""

from __future__ import annotations

import json

import click

from lipsync.cli._common import ERROR_EXIT, ProgressBar, echo_error
from lipsync.config import Settings
from lipsync.errors import ChecksumMismatch, ModelError
from lipsync.models.store import ModelStatus, ModelStore

_STATE_COLOURS = {"verified": "green", "present": "yellow", "missing": "red", "corrupt": "red"}


def _store() -> ModelStore:
    return ModelStore(Settings())


def _check_names(store: ModelStore, names: tuple[str, ...]) -> None:
    unknown = [n for n in names if n not in store.catalog]
    if unknown:
        raise click.BadParameter(
            f"unknown model(s) {', '.join(unknown)}; known: {', '.join(store.catalog)}", param_hint="NAME"
        )


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def _print_table(rows: list[ModelStatus]) -> None:
    name_w = max(len(r.name) for r in rows)
    for row in rows:
        state = click.style(f"{row.state:<8}", fg=_STATE_COLOURS.get(row.state))
        size = _human(row.size if row.size is not None else row.expected_size)
        click.echo(f"{row.name:<{name_w}}  {state}  {size:>9}  {row.path}")
        if row.detail:
            click.echo(f"{'':<{name_w}}  {row.detail}")


@click.group()
def models() -> None:
    """Model files: list, download, verify."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_models(as_json: bool) -> None:
    """Show each model: verified / present / missing, its path and size."""
    rows = _store().status()
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    _print_table(rows)


@models.command("download")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Download every model in the catalog.")
def download_models(names: tuple[str, ...], all_: bool) -> None:
    """Download NAME... (or --all) into MODELS_DIR, verifying checksums."""
    store = _store()
    if all_ and names:
        raise click.UsageError("give model names or --all, not both")
    if not all_ and not names:
        raise click.UsageError(f"name the models to download ({', '.join(store.catalog)}) or pass --all")
    _check_names(store, names)
    failed = False
    for name in names or tuple(store.catalog):
        try:
            with ProgressBar(unit="B") as bar:
                progress = bar.for_label(name)
                path = store.ensure(name, progress=progress)
        except ModelError as exc:
            # One line per model in the common error style; the others are still tried.
            failed = True
            echo_error(exc, field=name)
            continue
        click.echo(f"{name}: {path}")
    if failed:
        click.get_current_context().exit(ERROR_EXIT)


@models.command("verify")
@click.argument("names", nargs=-1)
def verify_models(names: tuple[str, ...]) -> None:
    """Hash present model files against the catalog. Exits 2 when a file is corrupt."""
    store = _store()
    _check_names(store, names)
    rows = store.verify(names or None)
    _print_table(rows)
    corrupt = [r for r in rows if r.state == "corrupt"]
    for row in corrupt:
        echo_error(ChecksumMismatch(f"{row.path.name} is corrupt: {row.detail}"), field=row.name)
    if corrupt:
        click.get_current_context().exit(ERROR_EXIT)
