"""Model bundles: the manifest, loading with its signature check, the findings a bundle's outputs give; the embedded
reference bundle."""
