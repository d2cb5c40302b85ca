"""A fake of NVIDIA's cuda-python (see tests/fake_gpu/README.md)."""
