"""JAX's persistent compilation cache for predict and serve: the model's compiled XLA program is
kept on disk, so a second `python -m fer_jax.predict photo.jpg` loads it instead of compiling it
again (about 2 s of CPU for the default model on a 2-core CPU).

The cache is `jax_compile` in fer_jax's cache folder, beside the convolution choices
(fer_jax/models/kernels/conv_choice.py): `$XDG_CACHE_HOME/fer_jax/jax_compile`, by default
`~/.cache/fer_jax/jax_compile` (FER_JAX_CACHE_DIR moves the folder). FER_JAX_COMPILE_CACHE=DIR
moves the compilation cache alone; FER_JAX_COMPILE_CACHE=off (or 0, or empty)
turns it off. A cache directory set through JAX's own jax_compilation_cache_dir (flag or
JAX_COMPILATION_CACHE_DIR) wins over both. Entries are keyed by the program, the JAX version and
the backend's flags, so a stale entry is never used; deleting the folder is always safe. The
folder's `scorers/` holds the scorer cache (scorer_cache.py), which the same switch turns off.
"""

import os

ENV = "FER_JAX_COMPILE_CACHE"
OFF = ("", "0", "off", "false", "no")


def directory():
  """Where the cache goes, or None where FER_JAX_COMPILE_CACHE turns it off."""
  chosen = os.environ.get(ENV)
  if chosen is not None:
    return None if chosen.strip().lower() in OFF else chosen
  from fer_jax.platform import cache_root  # not conv_choice, whose package imports Flax

  return os.path.join(cache_root.folder(), "jax_compile")


def enable():
  """Turns the cache on for this process (before its first compile); returns its folder or None."""
  import jax

  if jax.config.jax_compilation_cache_dir:  # the user configured JAX's own: theirs wins
    return jax.config.jax_compilation_cache_dir
  path = directory()
  if path is None:
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  # JAX's defaults keep only programs that took over 1 s to compile; the default model's pieces
  # take less, and it is their sum that a start-up pays.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return path
