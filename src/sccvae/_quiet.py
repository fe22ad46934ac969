"""Dropping other libraries' notices that say nothing to an SCCVAE user, during our calls only.

Lightning announces on every fit that no GPU or TPU is there and advertises a cloud logger;
scvi-tools' ``load`` reports that the model file it reads is "already downloaded". These
records are filtered on their own loggers while :meth:`SCCVAE.train` or :meth:`SCCVAE.load`
runs; every other message, warnings included, passes as before, and nothing is filtered
outside those calls.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

#: logger name -> fragments of the messages dropped from it
NOISE: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.utilities.rank_zero": (
        "litlogger",
        "GPU available: False",
        "TPU available: False",
    ),
    "scvi.data._download": ("already downloaded",),
}


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@contextlib.contextmanager
def without_notices() -> Iterator[None]:
    """Filter the records of :data:`NOISE` for the duration of the block."""
    installed = [
        (logging.getLogger(name), _DropMessages(fragments)) for name, fragments in NOISE.items()
    ]
    for logger, noise_filter in installed:
        logger.addFilter(noise_filter)
    try:
        yield
    finally:
        for logger, noise_filter in installed:
            logger.removeFilter(noise_filter)
