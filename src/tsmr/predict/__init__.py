"""Reference values predicted from what the owner built: firmware, kernel, initrd, command line.

Pure code: bytes and parameters in, :class:`~tsmr.predict.model.Prediction` out.
"""

from .model import PredictedEvent, Prediction

__all__ = ["PredictedEvent", "Prediction"]
