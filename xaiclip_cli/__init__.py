"""xaiclip: explain CLIP-style medical image models from one command line."""

__version__ = "0.1.0"
