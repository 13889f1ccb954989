"""lmlab: transformer architecture experiments on PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
