"""A fake of cuda-python's `cuda.bindings` (see tests/fake_gpu/README.md)."""
