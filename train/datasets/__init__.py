"""TFDS builders that jax-zoo defines itself (data sets that ship with a Python package)."""
