"""dataforge: manufacture instruction-tuning data and train on it."""

__version__ = "0.1.0"
