"""Decoding and preprocessing: the only image handling in the product; `converters` calls it too."""

from edge_app.imaging.decode import DecodedImage, DecodeLimits, decode
from edge_app.imaging.preprocess import preprocess

__all__ = ["DecodeLimits", "DecodedImage", "decode", "preprocess"]
