"""Runnable examples: python -m optax_blockada.examples.<name>."""
