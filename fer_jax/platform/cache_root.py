"""fer_jax's cache folder on this machine: `$FER_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/fer_jax`,
else `~/.cache/fer_jax`. It holds conv_impl='auto''s choices (models/kernels/conv_choice.py) and
the compiled programs and scorers of predict and serve (inference/compile_cache.py,
inference/scorer_cache.py). Importing this imports nothing heavy (no JAX, no Flax)."""

import os

ENV = "FER_JAX_CACHE_DIR"


def folder():
  return os.environ.get(ENV) or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fer_jax"
  )
