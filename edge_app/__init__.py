"""Offline AI appliance for clinics: images in, a trained model's findings out, on a Jetson or any CPU."""

__version__ = "0.1.0"
