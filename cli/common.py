"""What every command module shares: the params option and the one-line error exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

err = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file; its folder is the workspace")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-S", help="override a param: section.key=value")]


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)
