"""The markdown table the validation scripts print: one row per method, three decimals."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def print_method_table(
    rows: Iterable[tuple[str, Sequence[float]]], columns: Sequence[str]
) -> None:
    """Print ``| method | column ... |`` with each method's values to three decimals."""
    print("| method | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for method, values in rows:
        print(f"| {method} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
