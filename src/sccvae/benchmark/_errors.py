"""The benchmark's input error (a light module: the command line imports it for --help)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class BenchmarkInputError(ValueError):
    """Bad benchmark input, detected before any training starts."""


@contextmanager
def _as_input_errors() -> Iterator[None]:
    """Report a KeyError or ValueError raised while reading the input as a BenchmarkInputError.

    Reading the data, its labels and its splits raises these for bad input (a missing
    column, a malformed label, too few perturbations); the run reports them as input errors.
    """
    try:
        yield
    except (KeyError, ValueError) as err:
        if isinstance(err, BenchmarkInputError):
            raise
        raise BenchmarkInputError(_message(err)) from err


def _message(err: BaseException) -> str:
    # a KeyError's str() quotes its message; its first argument reads as written
    return str(err.args[0]) if err.args else str(err)
