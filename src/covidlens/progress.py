"""Rich progress bars and console output on stderr, so stdout stays clean for tables and CSV."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield `update(done, total=None, note="")`, drawing a bar when enabled and stderr is a terminal."""
    if not (enabled and console.is_terminal):
        yield lambda *args, **kwargs: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, note="")

        def update(done: int, total: int | None = None, note: str = "") -> None:
            bar.update(
                task, completed=done, total=total if total is not None else bar.tasks[0].total, note=note
            )

        yield update
