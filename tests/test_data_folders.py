"""Image folders on disk: every format and mode, broken files, split and class names, the cache."""

import functools
import io
import os
import sys

import numpy as np
import pytest
from image_trees import link_class_folders, write_originals
from PIL import Image

from fer_jax import data
from fer_jax.configs import common
from fer_jax.data import cache, file_tree, folders

CLASSES = ("happy", "neutral", "sad", "surprise")


def gray(value, size=48):
  return Image.new("L", (size, size), value)


def write_formats(folder):
  """One file per format and mode, each with a known decoded gray value; returns {name: value}."""
  os.makedirs(folder, exist_ok=True)
  expected = {}

  def save(name, im, value, **kwargs):
    im.save(os.path.join(folder, name), **kwargs)
    expected[name] = value

  save("l.png", gray(100), 100)
  save("l.jpg", gray(100), 100)
  save("rgb.jpg", Image.new("RGB", (48, 48), (90, 90, 90)), 90)
  save("cmyk.jpg", Image.new("RGB", (48, 48), (120, 120, 120)).convert("CMYK"), 120)
  save("rgb.bmp", Image.new("RGB", (48, 48), (10, 20, 30)), 18)  # 601 luma: .299*10+.587*20+.114*30
  save("rgb.webp", Image.new("RGB", (48, 48), (70, 70, 70)), 70, lossless=True)
  palette = Image.new("P", (48, 48), 1)
  palette.putpalette([0, 0, 0, 200, 200, 200] + [0] * 762)
  save("p.png", palette, 200)
  wide = Image.fromarray(np.full((48, 48), 51400, np.uint16))  # 51400 / 65535 * 255 = 200.0
  assert wide.mode.startswith("I;16")
  save("i16.png", wide, 200)
  # Fully transparent white over black composites to 0; opaque stays.
  rgba = np.zeros((48, 48, 4), np.uint8)
  rgba[..., :3] = 255
  rgba[:, 24:, 3] = 255
  save("rgba.png", Image.fromarray(rgba, "RGBA"), None)
  frames = [gray(50).convert("P"), gray(220).convert("P")]
  frames[0].save(os.path.join(folder, "anim.gif"), save_all=True, append_images=frames[1:])
  expected["anim.gif"] = 50  # first frame
  save("big.png", gray(150, size=96), 150)  # resized to 48
  # EXIF orientation 3 (rotated 180 degrees): top half black on disk, white once applied.
  half = np.zeros((48, 48), np.uint8)
  half[24:] = 255
  exif = Image.Exif()
  exif[0x0112] = 3
  Image.fromarray(half).save(os.path.join(folder, "exif.jpg"), exif=exif.tobytes())
  expected["exif.jpg"] = None
  return expected


def write_broken(folder):
  os.makedirs(folder, exist_ok=True)
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48), np.uint8)).save(buf, "JPEG")
  with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
  open(os.path.join(folder, "empty.jpg"), "wb").close()
  with open(os.path.join(folder, "text.png"), "w") as f:
    f.write("not a picture\n")
  with open(os.path.join(folder, "notes.txt"), "w") as f:
    f.write("labels were checked twice\n")
  return {"truncated.jpg", "empty.jpg", "text.png"}


def write_class(folder, n, value=128, start=0):
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    gray((value + 7 * (i + start)) % 256).save(os.path.join(folder, f"{i + start:03d}.png"))


def config(root, cache_dir, **fields):
  c = common.data_config()
  c.root, c.cache_dir = str(root), str(cache_dir)
  c.num_workers = 1
  for k, v in fields.items():
    setattr(c, k, v)
  return c


def test_decode_image_formats_and_modes(tmp_path):
  expected = write_formats(tmp_path)
  for name, value in expected.items():
    image = folders.decode_image(tmp_path / name, 48, 1)
    assert image.shape == (48, 48, 1) and image.dtype == np.uint8, name
    if value is not None:
      tolerance = 3 if name.endswith(".jpg") else 0
      assert abs(image.astype(int) - value).max() <= tolerance, (name, image.min(), image.max())
  rgba = folders.decode_image(tmp_path / "rgba.png", 48, 1)
  assert rgba[:, :20].max() == 0 and rgba[:, 28:].min() == 255  # composited on black
  rotated = folders.decode_image(tmp_path / "exif.jpg", 48, 1).astype(int)
  assert rotated[:20].mean() > 240 and rotated[28:].mean() < 15


def test_decode_image_colour_and_filters(tmp_path):
  Image.new("RGB", (48, 48), (200, 10, 10)).save(tmp_path / "red.png")
  assert folders.decode_image(tmp_path / "red.png", 48, 3)[0, 0].tolist() == [200, 10, 10]
  gray(90).save(tmp_path / "g.png")
  assert folders.decode_image(tmp_path / "g.png", 48, 3)[5, 5].tolist() == [90, 90, 90]
  checker = (np.indices((96, 96)).sum(0) % 2 * 255).astype(np.uint8)
  Image.fromarray(checker).save(tmp_path / "checker.png")
  box = folders.decode_image(tmp_path / "checker.png", 48, 1, "box")
  nearest = folders.decode_image(tmp_path / "checker.png", 48, 1, "nearest")
  assert set(np.unique(box)) <= {127, 128}  # 2x2 means
  assert set(np.unique(nearest)) <= {0, 255}
  with pytest.raises(ValueError, match="config.data.resize_filter"):
    folders.decode_image(tmp_path / "g.png", 48, 1, "cubic-ish")
  with pytest.raises(ValueError, match="config.data.channels"):
    folders.decode_image(tmp_path / "g.png", 48, 2)


def test_decode_image_bad_files(tmp_path):
  write_broken(tmp_path)
  reasons = {}
  for name in ("truncated.jpg", "empty.jpg", "text.png"):
    with pytest.raises(folders.BadImage) as e:
      folders.decode_image(tmp_path / name, 48, 1)
    assert e.value.path == tmp_path / name
    reasons[name] = e.value.reason
  assert reasons["empty.jpg"] == "empty file"
  assert "not an image" in reasons["text.png"]
  assert "truncated" in reasons["truncated.jpg"]


@pytest.mark.filterwarnings("ignore:os.fork")  # JAX, when another test started it: not used here
@pytest.mark.parametrize("jax_imported", [False, True])  # process pool / thread pool
def test_decode_many_keeps_order_and_reports_errors(tmp_path, monkeypatch, jax_imported):
  if jax_imported:
    monkeypatch.setitem(sys.modules, "jax", sys.modules.get("jax", object()))
  else:
    monkeypatch.delitem(sys.modules, "jax", raising=False)
  paths = []
  for i in range(150):  # more than one chunk, so the process pool is used
    paths.append(tmp_path / f"{i:03d}.png")
    gray(i).save(paths[-1])
  paths.insert(7, tmp_path / "missing.png")
  images, ok, errors = folders.decode_many(paths, 48, 1, "bilinear", num_workers=2)
  assert images.shape == (151, 48, 48, 1)
  assert ok.sum() == 150 and not ok[7]
  assert images[ok][:, 0, 0, 0].tolist() == list(range(150))
  assert errors == [(str(tmp_path / "missing.png"), "file not found (removed while loading?)")]


def _chunk_sum(items, offset):
  return [x + offset for x in items]


class _Counter:
  def __init__(self):
    self.updates = []

  def update(self, n):
    self.updates.append(n)


@pytest.mark.filterwarnings("ignore:os.fork")
@pytest.mark.parametrize("workers", [1, 2])  # in this process / in the pool
def test_map_chunks_covers_every_chunk_once(monkeypatch, workers):
  monkeypatch.delitem(sys.modules, "jax", raising=False)
  progress = _Counter()
  pairs = list(
    folders.map_chunks(
      functools.partial(_chunk_sum, offset=1000), list(range(150)), 64, workers, progress
    )
  )
  assert sorted(s for s, _ in pairs) == [0, 64, 128]
  assert [x for _, r in sorted(pairs) for x in r] == list(range(1000, 1150))
  assert sorted(progress.updates) == [22, 64, 64]
  assert list(folders.map_chunks(len, [], 64, workers)) == []


def test_scan_tree_names_and_skips(tmp_path):
  write_class(tmp_path / "Training" / "Happiness", 2)
  write_class(tmp_path / "Training" / "SADNESS" / "batch1", 2)  # sub-folders of a class are read
  write_class(tmp_path / "Training" / "contempt", 2)
  write_class(tmp_path / "PublicTest" / "surprised", 1)
  write_class(tmp_path / "private_test" / "Neutral", 1)
  write_class(tmp_path / "extra" / "happy", 1)
  (tmp_path / "Training" / "Happiness" / "notes.txt").write_text("x")
  (tmp_path / "Training" / "Happiness" / ".DS_Store").write_text("x")
  (tmp_path / "README.md").write_text("x")
  scan = file_tree.scan_tree(tmp_path, CLASSES)
  assert scan.layout == "split"
  got = sorted(
    (os.path.relpath(f.path, tmp_path), f.split, f.label, f.class_name) for f in scan.files
  )
  assert got == [
    ("PublicTest/surprised/000.png", "val", 3, "surprise"),
    ("Training/Happiness/000.png", "train", 0, "happy"),
    ("Training/Happiness/001.png", "train", 0, "happy"),
    ("Training/SADNESS/batch1/000.png", "train", 2, "sad"),
    ("Training/SADNESS/batch1/001.png", "train", 2, "sad"),
    ("private_test/Neutral/000.png", "test", 1, "neutral"),
  ]
  skipped = {os.path.relpath(p, tmp_path): reason for p, reason in scan.skipped}
  assert set(skipped) == {"README.md", "Training/contempt", "Training/Happiness/notes.txt", "extra"}
  assert "unknown split folder" in skipped["extra"]
  assert "not in config.data.classes" in skipped["Training/contempt"]


def test_scan_tree_without_split_level(tmp_path):
  write_class(tmp_path / "happy", 2)
  write_class(tmp_path / "Sad", 1)
  scan = file_tree.scan_tree(tmp_path, CLASSES)
  assert scan.layout == "flat"
  assert sorted((f.split, f.class_name) for f in scan.files) == [
    (None, "happy"),
    (None, "happy"),
    (None, "sad"),
  ]


def test_match_class_aliases():
  assert file_tree.match_class("Happiness", CLASSES) == 0
  assert file_tree.match_class("sad-ness", CLASSES) == 2
  assert file_tree.match_class("Surprised", CLASSES) == 3
  assert file_tree.match_class("anger", CLASSES) is None
  assert file_tree.match_class("anger", ("angry", "happy")) == 0
  assert file_tree.match_class("fearful", ("Fear",)) == 0


def make_dataset(root, with_val=True):
  """A tree with PublicTest as val (or none), formats, broken files, an unknown class."""
  formats = write_formats(root / "train" / "happy")
  broken = write_broken(root / "train" / "neutral")
  write_class(root / "train" / "neutral", 10, value=10)
  write_class(root / "train" / "sadness", 10, value=20)
  write_class(root / "train" / "surprise", 10, value=30)
  write_class(root / "train" / "contempt", 3)
  if with_val:
    for c in CLASSES:
      write_class(root / "PublicTest" / c, 2, value=40)
  for c in CLASSES:
    write_class(root / "test" / c, 3, value=50)
  return formats, broken


def test_load_folder(tmp_path):
  formats, broken = make_dataset(tmp_path / "faces")
  dataset = data.load(config(tmp_path / "faces", tmp_path / "cache"))
  assert dataset.sizes() == {"train": len(formats) + 30, "val": 8, "test": 12}
  assert dataset.count_table()["train"] == {
    "happy": len(formats),
    "neutral": 10,
    "sad": 10,
    "surprise": 10,
  }
  train = dataset.splits["train"]
  assert train.images.shape[1:] == (48, 48, 1) and train.images.dtype == np.uint8
  assert train.labels.dtype == np.int32
  by_path = dict(zip(train.paths, train.images))
  assert by_path[str(tmp_path / "faces/train/happy/p.png")].max() == 200
  assert by_path[str(tmp_path / "faces/train/sadness/003.png")].max() == 20 + 21
  bad = {os.path.basename(p): reason for p, reason in dataset.report["bad_files"]}
  assert set(bad) == broken
  skipped = [os.path.relpath(p, tmp_path / "faces") for p, _ in dataset.report["skipped"]]
  assert sorted(skipped) == ["train/contempt", "train/neutral/notes.txt"]
  assert "val_from_train" not in dataset.report
  assert "skipped: 2" in dataset.summary() and "bad files: 3" in dataset.summary()


def test_missing_val_is_held_out_of_train(tmp_path):
  make_dataset(tmp_path / "faces", with_val=False)
  cfg = config(tmp_path / "faces", tmp_path / "cache")
  dataset = data.load(cfg)
  # round(10 % of 13 happy) = 1, of 10 = 1 per class.
  assert dataset.count_table()["val"] == {"happy": 1, "neutral": 1, "sad": 1, "surprise": 1}
  assert dataset.report["val_from_train"] == {"fraction": 0.1, "seed": 42, "moved": 4}
  assert not set(dataset.splits["train"].paths) & set(dataset.splits["val"].paths)
  again = data.load(cfg)  # from the cache: the same split
  assert again.report["cache"]["hit"] and again.splits["val"].paths == dataset.splits["val"].paths
  as_found = data.load(cfg, as_found=True)
  assert set(as_found.splits) == {"train", "test"}


def cache_files(cache_dir):
  return sorted(p for p in os.listdir(cache_dir))


def test_cache_hits_and_rebuilds(tmp_path):
  root, cache_dir = tmp_path / "faces", tmp_path / "cache"
  make_dataset(root)
  cfg = config(root, cache_dir)
  first = data.load(cfg)
  assert not first.report["cache"]["hit"]
  second = data.load(cfg)
  assert second.report["cache"]["hit"]
  for split in data.SPLITS:
    np.testing.assert_array_equal(first.splits[split].images, second.splits[split].images)
    np.testing.assert_array_equal(first.splits[split].labels, second.splits[split].labels)
    assert first.splits[split].paths == second.splits[split].paths
  assert second.report["bad_files"] == [list(b) for b in first.report["bad_files"]]
  assert len(cache_files(cache_dir)) == 1

  def load_and_check(hit, train_size):
    d = data.load(cfg)
    assert d.report["cache"]["hit"] == hit and len(d.splits["train"]) == train_size
    assert len(cache_files(cache_dir)) == 1  # the stale version was removed
    return d

  n = len(first.splits["train"])
  gray(5).save(root / "train" / "surprise" / "new.png")  # added
  load_and_check(False, n + 1)
  load_and_check(True, n + 1)
  os.remove(root / "train" / "surprise" / "new.png")  # removed
  load_and_check(False, n)
  changed = root / "train" / "sadness" / "000.png"  # changed: same name, new pixels and mtime
  gray(250).save(changed)
  st = os.stat(changed)
  os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  d = load_and_check(False, n)
  assert dict(zip(d.splits["train"].paths, d.splits["train"].images))[str(changed)].min() == 250
  # Changing the load parameters keeps the other version beside it.
  cfg.image_size = 24
  small = data.load(cfg)
  assert not small.report["cache"]["hit"] and small.splits["train"].images.shape[1:] == (24, 24, 1)
  cfg.channels = 3
  assert data.load(cfg).splits["test"].images.shape[1:] == (24, 24, 3)
  assert len(cache_files(cache_dir)) == 3
  cfg.image_size, cfg.channels = 48, 1
  assert data.load(cfg).report["cache"]["hit"]
  # Val fraction and seed do not change what is cached.
  cfg.val_fraction = 0.2
  assert data.load(cfg).report["cache"]["hit"]


def test_cache_write_is_atomic(tmp_path, monkeypatch):
  root, cache_dir = tmp_path / "faces", tmp_path / "cache"
  make_dataset(root)

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(np, "savez", interrupted)
  with pytest.raises(KeyboardInterrupt):
    data.load(config(root, cache_dir))
  assert cache_files(cache_dir) == []  # no half-written file, no temp file
  monkeypatch.undo()
  assert not data.load(config(root, cache_dir)).report["cache"]["hit"]
  # A damaged cache file is rebuilt, not trusted.
  (path,) = [cache_dir / p for p in cache_files(cache_dir)]
  good = path.read_bytes()
  for damaged in (b"garbage", good[: len(good) // 2]):
    path.write_bytes(damaged)
    assert not data.load(config(root, cache_dir)).report["cache"]["hit"]
  assert cache.read(path).sizes()["test"] == 12


def test_errors_name_the_config_field(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.data.root.*nowhere"):
    data.load(config(tmp_path / "nowhere", tmp_path / "cache", source="folder"))
  with pytest.raises(FileNotFoundError, match="config.data.root"):
    data.load(config(tmp_path / "nowhere", tmp_path / "cache"))
  with pytest.raises(ValueError, match="config.data.source.*'hdf5'"):
    data.load(config(tmp_path, tmp_path / "cache", source="hdf5"))
  write_class(tmp_path / "only_train" / "train" / "happy", 3)
  write_class(tmp_path / "only_train" / "train" / "sad", 3)
  with pytest.raises(ValueError, match="no test images.*only_train"):
    data.load(config(tmp_path / "only_train", tmp_path / "cache", classes=("happy", "sad")))
  write_class(tmp_path / "only_train" / "test" / "happy", 1)
  with pytest.raises(ValueError, match="class neutral, surprise.*only_train"):
    data.load(config(tmp_path / "only_train", tmp_path / "cache"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no images.*empty"):
    data.load(config(tmp_path / "empty", tmp_path / "cache"))


def loop_tree(root):
  """A split tree whose happy and sad train folders link to each other: 3 images per folder."""
  originals = write_originals(str(root), {s: {c: 3 for c in CLASSES} for s in data.SPLITS})
  return originals, link_class_folders(str(root))


def test_a_symlink_loop_between_class_folders_reads_each_face_once_in_its_own_class(tmp_path):
  originals, links = loop_tree(tmp_path / "faces")
  scan = file_tree.scan_tree(tmp_path / "faces", CLASSES)
  expected = sorted((p, s, c) for (s, c), paths in originals.items() for p in paths)
  assert sorted((f.path, f.split, f.class_name) for f in scan.files) == expected
  reasons = dict(scan.skipped)
  assert sorted(reasons) == sorted(links)
  assert reasons[links[0]] == (
    f"symlink to a file or folder scanned elsewhere (as {tmp_path / 'faces/train/sad'})"
  )
  dataset = data.load(config(tmp_path / "faces", tmp_path / "cache"))
  assert dataset.count_table()["train"] == {c: 3 for c in CLASSES}
  assert "2 symlink to a file or folder scanned elsewhere" in dataset.summary()


def test_links_out_of_the_tree_are_read_once_and_links_within_it_not_at_all(tmp_path):
  elsewhere = write_originals(str(tmp_path / "elsewhere"), {"train": {"happy": 2}})
  faces = tmp_path / "faces"
  write_originals(str(faces), {s: {c: 1 for c in CLASSES} for s in data.SPLITS})
  happy = faces / "train" / "happy"
  os.symlink(tmp_path / "elsewhere" / "train" / "happy", happy / "more")  # read: not in the tree
  os.symlink(tmp_path / "elsewhere" / "train" / "happy", happy / "again")  # the same folder
  os.symlink(elsewhere["train", "happy"][0], faces / "train" / "sad" / "one.png")  # a file in it
  os.symlink(faces / "test" / "sad" / "test_sad_000.png", happy / "x.png")  # a file in the tree
  scan = file_tree.scan_tree(faces, CLASSES)
  train_happy = [f.path for f in scan.files if f.split == "train" and f.class_name == "happy"]
  assert train_happy == sorted(
    [str(happy / "train_happy_000.png")]
    + [str(happy / "again" / os.path.basename(p)) for p in elsewhere["train", "happy"]]
  )  # 'again' sorts first, so it is the link that is followed
  reasons = {os.path.relpath(p, faces): r.split(" (")[0] for p, r in scan.skipped}
  assert reasons == {
    "train/happy/more": "symlink to a file or folder scanned elsewhere",
    "train/happy/x.png": "symlink to a file or folder scanned elsewhere",
    "train/sad/one.png": "symlink to a file or folder scanned elsewhere",
  }
  paths, skipped = file_tree.find_files(faces)
  assert len(paths) == 12 + 2 and len(skipped) == 3


def test_only_regular_files_are_opened(tmp_path):
  faces = tmp_path / "faces"
  write_originals(str(faces), {s: {c: 1 for c in CLASSES} for s in data.SPLITS})
  os.mkfifo(faces / "train" / "sad" / "pipe.png")
  os.mkfifo(tmp_path / "elsewhere.png")
  os.symlink(tmp_path / "elsewhere.png", faces / "train" / "sad" / "to_pipe.png")
  scan = file_tree.scan_tree(faces, CLASSES)
  assert len(scan.files) == 12
  assert sorted((os.path.relpath(p, faces), r) for p, r in scan.skipped) == [
    ("train/sad/pipe.png", "not a regular file (named pipe)"),
    ("train/sad/to_pipe.png", "not a regular file (named pipe)"),
  ]
  assert data.load(config(faces, tmp_path / "cache")).sizes() == {"train": 4, "val": 4, "test": 4}
