"""Running a benchmark quietly and visibly: progress bars, CPU threads, Lightning's logs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any


class Progress:
    """A rich progress display, or a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def add(self, description: str, total: int) -> Any:
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total)

    def advance(self, task: Any, n: int = 1, description: str | None = None) -> None:
        if self._progress is None or task is None:
            return
        kwargs = {"description": description} if description else {}
        self._progress.update(task, advance=n, **kwargs)

    def remove(self, task: Any) -> None:
        if self._progress is not None and task is not None:
            self._progress.remove_task(task)


def epoch_callback(progress: Progress, task: Any):
    import lightning.pytorch as pl

    class _EpochProgress(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
            progress.advance(task)

    return _EpochProgress()


@contextlib.contextmanager
def cpu_threads(n_threads: int | None) -> Iterator[None]:
    """Limit torch and BLAS (numpy / scipy) CPU threads for the run, restoring them after."""
    from sccvae.train._training_plan import torch_threads

    if n_threads is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn
        limits = contextlib.nullcontext()
    else:
        limits = threadpool_limits(limits=int(n_threads))
    with torch_threads(int(n_threads)), limits:
        yield


@contextlib.contextmanager
def quiet_lightning(enabled: bool) -> Iterator[None]:
    """Silence Lightning's per-fit INFO banners (GPU available, ...) for the run only."""
    if not enabled:
        yield
        return
    names = ["lightning.pytorch", "lightning.fabric", "lightning"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
