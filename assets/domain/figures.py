"""Figures as people read them: floats rounded to a few significant digits for Dagster metadata.

A metric of 0.5964912280701754 reads as 0.5965 in the UI; the full value stays where it is computed
(MLflow, the asset's value). Use `rounded` on a metadata dict before handing it to Dagster.
"""

import math
from typing import Any

SIGNIFICANT_DIGITS = 4


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` rounded to `digits` significant digits (0, inf and nan unchanged)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def rounded(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """Every float in `value` (a metadata dict, or a list or dict inside one) rounded to `digits`
    significant digits; other values unchanged. Dagster's metadata wrappers pass through as they are."""
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return significant(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(rounded(v, digits) for v in value)
    return value
