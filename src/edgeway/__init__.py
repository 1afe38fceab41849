"""Edgeway: a collaboration edge (core/edge traversal pair for SIP and media)."""

__version__ = "0.1.0"
