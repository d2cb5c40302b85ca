"""A share (k of n) with its 95 % interval: what the model's monitoring reports, its agreement and its drift alike."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959964  # the normal quantile of a two-sided 95 % interval


@dataclass(frozen=True)
class Share:
    """k of n, with its 95 % Wilson score interval."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """Wilson's score interval (Wilson 1927; Agresti & Coull 1998 for why it, not the normal one, at small n).
        Written here: statsmodels' `proportion_confint` gives the same, but neither it nor scipy is a dependency of
        the appliance, and these seven lines would be its only use."""
        if not self.n:
            return None
        p, z2 = self.k / self.n, Z95 * Z95
        centre = (p + z2 / (2 * self.n)) / (1 + z2 / self.n)
        half = Z95 * math.sqrt(p * (1 - p) / self.n + z2 / (4 * self.n * self.n)) / (1 + z2 / self.n)
        return max(0.0, centre - half), min(1.0, centre + half)
