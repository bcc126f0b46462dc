"""A rich progress bar with ETA for long loops (quiet when ``enabled`` is False)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class Bar:
    def __init__(self, progress: Progress | None, task):
        self._progress, self._task = progress, task

    def update(self, completed: int, status: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, status=status)


@contextlib.contextmanager
def progress_bar(description: str, total: int, completed: int = 0, enabled: bool = True) -> Iterator[Bar]:
    if not enabled:
        yield Bar(None, None)
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, transient=False) as progress:
        yield Bar(progress, progress.add_task(description, total=total, completed=completed, status=""))
