"""Image-folder load speed: a cold load (decode + cache write) and a cached load.

Makes `--images` 48x48 JPEGs in `<workdir>/faces/<split>/<class>/` (80/10/10, four classes,
kept between runs), then times `fer_jax.data.load` with an empty cache and again with the
cache it wrote. `--compare_pools` also times decoding alone in one process, in a process
pool, and in a thread pool (what the loader uses once JAX is imported: see
fer_jax/data/folders.py, `executor`).

  python -m benchmarks.load_throughput [--images=25000] [--workdir=/tmp/fer_jax_load_bench]

Targets (2 cores): cold < 15 s, cached < 1 s. Figures measured on this project's machine
are in docs/data.md.
"""

import functools
import os
import shutil
import time

import numpy as np
from absl import app, flags
from PIL import Image

from benchmarks.timing import timed
from fer_jax import data
from fer_jax.configs import common
from fer_jax.data import file_tree, folders

_IMAGES = flags.DEFINE_integer("images", 25_000, "JPEGs in the benchmark folder")
_WORKDIR = flags.DEFINE_string(
  "workdir", "/tmp/fer_jax_load_bench", "where the folder and cache go"
)
_WORKERS = flags.DEFINE_integer("workers", 0, "decode processes (0 = one per core)")
_COMPARE = flags.DEFINE_bool("compare_pools", True, "also time one process / processes / threads")

CLASSES = common.FER4


def make_folder(root, n):
  """n smooth-noise 48x48 grayscale JPEGs (about the size of FER2013's), unless already there."""
  marker = os.path.join(root, f".complete-{n}")
  if os.path.exists(marker):
    return
  shutil.rmtree(root, ignore_errors=True)
  rng = np.random.default_rng(0)
  start = time.perf_counter()
  for i in range(n):
    split = "train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test")
    # every class in every split
    folder = os.path.join(root, split, CLASSES[i // 10 % len(CLASSES)])
    os.makedirs(folder, exist_ok=True)
    coarse = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    face = Image.fromarray(coarse).resize((48, 48), Image.Resampling.BICUBIC)
    face.save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
  open(marker, "w").close()
  print(f"made {n} JPEGs in {root} in {time.perf_counter() - start:.1f} s")


def main(argv):
  del argv
  root = os.path.join(_WORKDIR.value, "faces")
  make_folder(root, _IMAGES.value)
  cfg = common.data_config()
  cfg.root = root
  cfg.cache_dir = os.path.join(_WORKDIR.value, "cache")
  cfg.num_workers = _WORKERS.value
  shutil.rmtree(cfg.cache_dir, ignore_errors=True)
  workers = _WORKERS.value or os.cpu_count()

  dataset, cold, cold_cpu = timed(lambda: data.load(cfg))
  _, cached, cached_cpu = timed(lambda: data.load(cfg))
  n = sum(dataset.sizes().values())
  print(
    f"\n{n} images, {workers} decode processes, {os.cpu_count()} cores, "
    f"load average {os.getloadavg()[0]:.1f}"
  )
  print(
    f"cold load   {cold:6.2f} s wall, {cold_cpu:6.2f} s CPU  ({n / cold:,.0f} img/s)   "
    "target < 15 s"
  )
  print(
    f"cached load {cached:6.2f} s wall, {cached_cpu:6.2f} s CPU                     target < 1 s"
  )

  if _COMPARE.value:
    paths = [f.path for f in file_tree.scan_tree(root, CLASSES).files]
    runs = [("1 process", 1)] + [(f"{workers} processes", workers)] * (workers > 1)
    results = [
      (name, *timed(functools.partial(folders.decode_many, paths, 48, 1, num_workers=w))[1:])
      for name, w in runs
    ]
    import jax  # noqa: F401  (from here on decode_many uses threads, as in training)

    results.append(
      (
        f"{workers} threads",
        *timed(lambda: folders.decode_many(paths, 48, 1, num_workers=workers))[1:],
      )
    )
    print(
      "decode only: "
      + "; ".join(
        f"{name} {wall:.2f} s wall ({results[0][1] / wall:.2f}x), {cpu:.2f} s CPU"
        for name, wall, cpu in results
      )
    )


if __name__ == "__main__":
  app.run(main)
