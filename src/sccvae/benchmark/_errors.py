"""The benchmark's input error (a light module: the command line imports it for --help)."""


class BenchmarkInputError(ValueError):
    """Bad benchmark input, detected before any training starts."""
