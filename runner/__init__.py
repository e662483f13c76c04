"""Declarative vLLM tensor-parallel runner: recipes in, a verified server and a manifest out."""

__version__ = "0.1.0"
