"""Errors a user can act on.

Every user-fixable problem (a bad file, an unsupported op, a model too large
for the hardware, wrong input shapes) raises an ``AnacError`` subclass whose
message names the node, the op and the numbers. The CLI prints the message
without a traceback and exits 1. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class AnacError(Exception):
    """Base class of all user-fixable errors."""


class ModelLoadError(AnacError):
    """The model file is missing, truncated, or not ONNX."""


class InsufficientMemoryError(ModelLoadError):
    """The model's weights would not fit in the memory available to compile it."""


class UnsupportedModelError(AnacError):
    """Some nodes can neither be mapped to crossbars nor run on the host."""


class InvalidWeightsError(AnacError):
    """A weight tensor holds NaN or Inf values."""


class ShapeError(AnacError):
    """An input shape is unknown, symbolic without a value, or mismatched."""


class HardwareSpecError(AnacError):
    """The hardware description is malformed or inconsistent."""


class CapacityError(AnacError):
    """The model does not fit the hardware budget."""


class PlacementCapacityError(CapacityError):
    """The placed tiles exceed the chip budget."""


class ArtifactError(AnacError):
    """A compiled program cannot be written or read."""


class InputError(AnacError):
    """Inputs given to the simulator or to verify do not match the model."""


class PipelineError(AnacError):
    """The pass pipeline is misconfigured (a pass ran before what it requires)."""


class ProgramMismatchError(ArtifactError):
    """A program used with a model it was not compiled from (their digests differ)."""
