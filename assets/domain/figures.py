"""Figures as people read them in the UIs: floats rounded to 4 decimals, and small counts shown as
markdown tables rather than raw JSON.

A metric of 0.5964912280701754 reads as 0.5965 and a share of 0.007692 as 0.0077; a value below
0.001 keeps 4 significant digits instead (a learning rate of 0.00025 does not read as 0.0003, nor
2.5e-05 as 0). The full value stays where it is computed (the asset's value, the run's
`eval/metrics.json`).
"""

import math

from assets.domain.metrics import SHOWN_DECIMALS

SIGNIFICANT_DIGITS = 4
# Below this size a value is rounded to SIGNIFICANT_DIGITS rather than to SHOWN_DECIMALS places.
SMALL = 1e-3


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` rounded to `digits` significant digits (0, inf and nan unchanged)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def shown(value: float) -> float:
    """`value` as the UIs show it: rounded to SHOWN_DECIMALS places, or to SIGNIFICANT_DIGITS
    significant digits when smaller than SMALL (inf and nan unchanged)."""
    if not math.isfinite(value):
        return value
    return significant(value) if abs(value) < SMALL else round(value, SHOWN_DECIMALS)


def counts_table(counts: dict[str, int], what: str, unit: str = "rows") -> str:
    """Counts as a two-column markdown table (`what`, `unit`), most first; '-' when there are none."""
    if not counts:
        return "-"
    lines = [f"| {what} | {unit} |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def table_counts(value: str | dict | None) -> dict[str, int]:
    """The counts of a `counts_table` (or of the JSON dict that metadata written before it holds)."""
    if isinstance(value, dict):
        return value
    rows = [line.strip().strip("|").rsplit("|", 1) for line in (value or "").splitlines()[2:]]
    return {name.strip(): int(n) for name, n in rows}


def shown_floats(metadata: dict) -> dict:
    """`metadata` with every plain float `shown` (metadata values of other kinds as they are)."""
    return {k: shown(v) if isinstance(v, float) else v for k, v in metadata.items()}
