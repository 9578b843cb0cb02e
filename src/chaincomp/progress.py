"""Progress bars with rate and ETA (rich), one console for the whole program."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 120)
quiet = bool(os.environ.get("CHAINCOMP_QUIET"))


def make_progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True,
                    disable=quiet or not (sys.stdout.isatty() or os.environ.get("CHAINCOMP_PROGRESS")))


@contextmanager
def task(description: str, total: int) -> Iterator["Bar"]:
    """A bar for one piece of long work; prints a one-line summary when the bar is not shown."""
    with make_progress() as p:
        yield Bar(p, p.add_task(description, total=total, rate=""))


class Bar:
    def __init__(self, progress: Progress, task_id):
        self.progress, self.id = progress, task_id

    def advance(self, n: int = 1, **fields) -> None:
        t = self.progress.tasks[self.id] if self.progress.tasks else None
        rate = f"{t.speed:.1f} it/s" if t is not None and t.speed else ""
        self.progress.update(self.id, advance=n, rate=rate, **fields)

    def describe(self, text: str) -> None:
        self.progress.update(self.id, description=text)


def interactive() -> bool:
    return sys.stdout.isatty() or bool(os.environ.get("CHAINCOMP_PROGRESS"))


def log(msg: str) -> None:
    if not quiet:
        console.print(msg)
