"""TAZCOM: a serverless, offline-first chat mesh for people who share a local network."""

__version__ = "0.1.0"
