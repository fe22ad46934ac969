"""Dropping other libraries' notices that say nothing to an SCCVAE user, during our calls only.

Lightning announces on every fit that no GPU or TPU is there and advertises a cloud logger;
scvi-tools' ``load`` reports that the model file it reads is "already downloaded". These
records are filtered on their own loggers while :meth:`SCCVAE.train` or :meth:`SCCVAE.load`
runs, and so is one warning, Lightning's own deprecation notice about ``LeafSpec``
(:data:`NOISY_WARNINGS`), raised inside Lightning at every fit. Every other message and
warning passes as before, and nothing is filtered outside those calls.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
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


#: (message pattern, category) of warnings raised inside other libraries that an SCCVAE user
#: can do nothing about: Lightning's own use of a deprecated torch API (``_pytree.py``).
NOISY_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@contextlib.contextmanager
def without_notices() -> Iterator[None]:
    """Filter the records of :data:`NOISE` and :data:`NOISY_WARNINGS` during the block."""
    installed = [
        (logging.getLogger(name), _DropMessages(fragments)) for name, fragments in NOISE.items()
    ]
    for logger, noise_filter in installed:
        logger.addFilter(noise_filter)
    try:
        with warnings.catch_warnings():  # restores the caller's warning filters afterwards
            for message, category in NOISY_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for logger, noise_filter in installed:
            logger.removeFilter(noise_filter)
