"""carot-harness: a sweep harness for CaRot, calibrated robust fine-tuning of CLIP-style models."""

__version__ = "0.1.0"
