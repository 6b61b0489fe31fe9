"""Compatibility alias: the PCM model lives in ``anac.backends.devices.pcm``."""

from anac.backends.devices.pcm import PCMModel

__all__ = ["PCMModel"]
