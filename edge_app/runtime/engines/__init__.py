"""TensorRT engines: the cache, the build in a process of its own, the builds at start."""
