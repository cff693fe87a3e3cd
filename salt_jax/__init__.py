"""salt_jax: a JAX/Flax reimplementation of a top-4% TGS Salt Identification solution."""

__version__ = "0.1.0"
