"""Team mode commands: `ddmops server` (a shared MLflow tracking server) and `ddmops remote
check` (is an S3 bucket reachable and writable from this machine?)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

remote = typer.Typer(no_args_is_help=True, help="S3 remotes shared by a team (DVC data, MLflow artifacts).")


def register(app: typer.Typer) -> None:
    app.command()(server)
    app.add_typer(remote, name="remote")


def server(
    backend_store_uri: Annotated[Optional[str], typer.Option(
        envvar="MLFLOW_BACKEND_STORE_URI", show_envvar=False,
        help="runs database: any SQLAlchemy URL (postgresql://user@db-host/mlflow, ...); "
             "default: SQLite ./mlflow-server.db")] = None,
    artifacts: Annotated[str, typer.Option(
        "--artifacts", envvar="MLFLOW_ARTIFACTS_DESTINATION", show_envvar=False,
        help="artifact store: a folder or s3://bucket/prefix")] = "mlartifacts",
    host: Annotated[str, typer.Option(help="interface to bind; 0.0.0.0 to serve other machines")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 5000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 2,
    proxy: Annotated[bool, typer.Option(help="workers send artifacts through the server (they need no S3 "
                                        "credentials); --no-proxy: they write to the store directly")] = True,
    name: Annotated[Optional[list[str]], typer.Option(
        help="host name workers use to reach this server (repeatable; default: this machine's names)")] = None,
    check: Annotated[bool, typer.Option(help="check an s3:// artifact store is writable before starting")] = True,
) -> None:
    """Start an MLflow tracking server for a team (Ctrl-C stops it)."""
    from cli.common import fail
    from ddmops.errors import DdmopsError
    from ddmops.ops.remote import check_bucket, is_s3, target_from_url
    from ddmops.ops.server import ServerSpec, artifact_location, redact, start
    from ddmops.ops.environment import quiet_environment

    quiet_environment()
    spec = ServerSpec(backend_store_uri=backend_store_uri or f"sqlite:///{Path('mlflow-server.db').resolve()}",
                      artifacts=artifacts, host=host, port=port, workers=workers, proxy=proxy,
                      names=tuple(name or ()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the server too
    try:
        if is_s3(artifacts) and check:
            typer.echo(check_bucket(target_from_url(artifacts)), err=True)
        typer.echo(f"starting MLflow server (runs: {redact(spec.backend_store_uri)}, "
                   f"artifacts: {artifact_location(artifacts)}, "
                   f"{'proxied' if proxy else 'direct'})...", err=True)
        running = start(spec)
    except DdmopsError as exc:
        fail(str(exc))
    code = 0
    try:
        print(f"MLflow server ready: {spec.local_uri}  (UI: {spec.local_uri}/#/experiments)", flush=True)
        print(f"export MLFLOW_TRACKING_URI={spec.team_uri}", flush=True)
        code = running.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
    if code:
        fail(f"mlflow server stopped with exit code {code}")


@remote.command("check")
def remote_check(
    url: Annotated[Optional[str], typer.Argument(help="s3://bucket/prefix (default: the DVC remote here)")] = None,
    name: Annotated[Optional[str], typer.Option("--remote", "-r", help="DVC remote to check "
                                                "(default: the repo's default remote)")] = None,
    endpoint_url: Annotated[Optional[str], typer.Option(
        help="S3 endpoint of MinIO, Ceph, ... (default: the DVC remote's, or MLFLOW_S3_ENDPOINT_URL)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds each request may take")] = 5.0,
) -> None:
    """Check that an S3 bucket is reachable and writable with this machine's credentials."""
    from cli.common import fail
    from ddmops.errors import DdmopsError
    from ddmops.ops.remote import check_bucket, target_from_dvc, target_from_url
    from ddmops.ops.environment import quiet_environment

    quiet_environment()
    try:
        target = target_from_url(url, endpoint_url) if url else target_from_dvc(Path.cwd(), name, endpoint_url)
        typer.echo(check_bucket(target, timeout=timeout))
    except DdmopsError as exc:
        fail(str(exc))
