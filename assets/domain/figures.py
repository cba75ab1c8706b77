"""Figures as people read them: floats rounded to a few significant digits for Dagster metadata.

A metric of 0.5964912280701754 reads as 0.5965 in the UI; the full value stays where it is computed
(MLflow, the asset's value).
"""

import math

SIGNIFICANT_DIGITS = 4


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` rounded to `digits` significant digits (0, inf and nan unchanged)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))
