"""Paimon-server: receives files over HTTP and stores them in MEGA."""

__version__ = "1.0.0"
