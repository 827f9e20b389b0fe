"""edged: a daemon that serves a portfolio of quantized models on an edge device."""

__version__ = "0.1.0"
