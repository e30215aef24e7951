"""``lipsync serve``: the REST API under uvicorn. Settings come from the environment (see the README)."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option(
    "--workers-per-gpu", type=click.IntRange(1, 16), default=None,
    help="Concurrent jobs per GPU (default 1; one worker on CPU). LIPSYNC_WORKERS overrides the total.",
)
@click.option(
    "--no-workers", is_flag=True,
    help="Serve the API only; jobs run on `lipsync worker` processes (needs LIPSYNC_REDIS_URL).",
)
def serve(host: str, port: int, workers_per_gpu: int | None, no_workers: bool) -> None:
    """Run the HTTP API (POST /lipsync, /face-tracking, /jobs ...; docs at /docs)."""
    from lipsync.api import create_app
    from lipsync.api.server import serve as run_server
    from lipsync.config import Settings
    from lipsync.jobs.engine import torch_device_info

    settings = Settings()
    if no_workers:
        if not settings.redis_url:
            raise click.UsageError("--no-workers needs LIPSYNC_REDIS_URL: without a shared queue nothing would "
                                   "run the jobs")
        settings = settings.model_copy(update={"run_workers": False})
    if workers_per_gpu is not None and settings.workers is None:
        gpus = int(torch_device_info().get("gpu_count") or 0)
        settings = settings.model_copy(update={"workers": max(1, gpus) * workers_per_gpu if gpus else 1})
    # Connection limits (LIPSYNC_HTTP_*): see lipsync.api.server.
    run_server(create_app(settings), settings, host=host, port=port)
