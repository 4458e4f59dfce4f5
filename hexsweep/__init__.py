"""hexsweep: train a Hex policy/value network and sweep its hyperparameters in parallel."""

__version__ = "0.1.0"
