"""The runtime's version, stamped into every record header."""

__version__ = "0.1.0"
