"""The markdown table the validation scripts print: one row per method, three decimals."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: What the validation scripts print: the Pearson of change on all genes and on the top-20
#: DE genes, each with and without the target, and the MSE on the DE genes.
COLUMNS = (
    "pearson_delta_all",
    "pearson_delta_all_notarget",
    "pearson_delta_de",
    "pearson_delta_de_notarget",
    "mse_de",
)


def print_method_table(
    rows: Iterable[tuple[str, Sequence[float]]], columns: Sequence[str]
) -> None:
    """Print ``| method | column ... |`` with each method's values to three decimals."""
    print("| method | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for method, values in rows:
        print(f"| {method} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
