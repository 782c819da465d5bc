"""ftcp: fault-tolerant TCP for unmodified servers (FT-TCP, INFOCOM 2001)."""

__version__ = "0.1.0"
