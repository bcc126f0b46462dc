"""Helpers shared by the benchmark scripts: data location and table printing."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # development data, present beside the checkout on dev/CI machines


def print_table(title: str, columns: list[str], rows: list[list], summary: str, width: int = 140) -> None:
    """A rich table, then the one-line summary last."""
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        table.add_row(*[f"{v:.2f}" if isinstance(v, float) else str(v) for v in r])
    console = Console(width=width)
    console.print(table)
    if summary:
        console.print(summary, highlight=False)
