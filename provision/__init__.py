"""provision: build minimal, immutable Linux machine images and keep fleets running them."""

__version__ = "0.1.0"
