"""The bundle's fingerprint: what its validation (else calibration) images looked like, for the box's drift
monitoring. The input guard's score on each (as the box records it: the largest margin over a component's threshold)
at 21 quantiles, the images' mean intensity histogram, and how many had each bit depth, photometric interpretation
and size."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from converters import guard
from converters.images import ImageSet
from edge_app.bundles.manifest import Fingerprint, InputGuard, InputSpec

QUANTILES = np.linspace(0.0, 1.0, 21)


def fingerprint(
    images: ImageSet, data: str, model: Any, spec: InputSpec, input_guard: InputGuard | None
) -> Fingerprint:
    """The fingerprint of `images` (described as `data`); the guard's scores where `model` carries `input_guard`."""
    quantiles = None
    if input_guard is not None:
        thresholds = np.asarray([c.threshold for c in input_guard.components], dtype=np.float64)
        margins = (guard.scores(model, spec, images.tensors).astype(np.float64) - thresholds).max(axis=1)
        quantiles = tuple(round(float(q), 4) for q in np.quantile(margins, QUANTILES))
    intensity = np.asarray(images.intensity, dtype=np.float64).mean(axis=0)
    bits, photometric, sizes = (Counter(kind[i] for kind in images.kinds) for i in range(3))
    return Fingerprint(
        images=len(images.names),
        data=data,
        guard_quantiles=quantiles,
        intensity=tuple(round(float(v), 4) for v in intensity),
        bits=dict(sorted(bits.items())),
        photometric=dict(sorted(photometric.items())),
        sizes=dict(sorted(sizes.items())),
    )
