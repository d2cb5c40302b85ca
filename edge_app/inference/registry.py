"""The models this appliance holds, and which of them may read a given image."""

from __future__ import annotations

from edge_app.bundles.manifest import Manifest
from edge_app.config import Settings
from edge_app.imaging import DecodeLimits
from edge_app.imaging.header import ImageHeader
from edge_app.imaging.sandbox import DecoderPool
from edge_app.inference.diagnoser import Diagnoser


def fits(manifest: Manifest, header: ImageHeader) -> bool:
    """Whether an image's header says it is one the model was made for (`IntendedUse.admits`)."""
    return manifest.intended_use.admits(header.modality, header.body_part, header.view)


class Registry:
    """Several bundles, each with its runner, sharing one pool of decoder processes."""

    def __init__(self, diagnosers: list[Diagnoser], decoder: DecoderPool | None = None) -> None:
        self.diagnosers = diagnosers
        self.decoder = decoder

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        imaging = settings.imaging
        limits = DecodeLimits(max_pixels=imaging.max_pixels, max_decode_mb=imaging.max_decode_mb, frame=imaging.frame)
        decoder = DecoderPool(limits, workers=imaging.decoders, timeout_s=imaging.decode_timeout_s)
        diagnosers: list[Diagnoser] = []
        try:
            for path in [settings.model.bundle, *settings.model.extra_bundles]:
                diagnosers.append(Diagnoser.from_settings(settings, path, decoder=decoder))
        except BaseException:
            for d in diagnosers:
                d.close()
            decoder.close()
            raise
        return cls(diagnosers, decoder)

    def route(self, header: ImageHeader) -> list[Diagnoser]:
        """The models whose intended use fits the image, in the configured order."""
        return [d for d in self.diagnosers if fits(d.bundle.manifest, header)]

    def describe(self) -> str:
        """The models, each with the modalities it reads."""
        parts = []
        for d in self.diagnosers:
            m = d.bundle.manifest
            parts.append(f"{m.name} {m.version} for {', '.join(m.intended_use.modality) or 'any modality'}")
        return "; ".join(parts)

    def close(self) -> None:
        """The decoders first (images still being read are answered "not read", queued again), then the models."""
        if self.decoder is not None:
            self.decoder.close()
        for d in self.diagnosers:
            d.close()
