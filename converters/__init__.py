"""Conversion stage: trained models to verified, signed model bundles."""
