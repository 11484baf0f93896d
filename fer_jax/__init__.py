"""fer_jax: facial emotion recognition research code in JAX/Flax."""
