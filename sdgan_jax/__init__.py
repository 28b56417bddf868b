"""sdgan_jax: SDGAN face de-identification (Semantic-aware De-identification GAN) in JAX/Flax."""

__version__ = '0.1.0'
