"""From a queued image to a recorded result: the diagnoser, the registry, the worker, live video, model status and
import."""
