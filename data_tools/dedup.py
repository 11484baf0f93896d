"""Finds exact and near-duplicate images, reports leakage between splits, and removes it.

  python -m data_tools.dedup SRC --out DST [--apply] [--hash phash --threshold 6]
      [--leaks drop|keep] [--within keep-one|keep-all] [--conflicts review|drop|keep]

Every image is decoded as the loader decodes it (gray, --image-size, so "exact" means the model
sees identical pixels) and gets 64-bit codes: a digest of its pixels, a perceptual hash
(imagehash: pHash by default; dHash, aHash, wHash selectable) and the perceptual hashes of
transformed copies of it. Two images are duplicates when their digests are equal or their
hashes differ in at most --threshold bits. A horizontally flipped copy has an unrelated pHash,
so each image's hash is also compared with the other's mirror-image hash; pHash also moves by
more than the threshold for a 1-2 px translation, so --shift N compares it with the hashes of
the other image translated by up to N px. Duplicates are grouped transitively.

Findings: images in val/test with a twin in train (or in test with a twin in val) are leaks;
several members of a group in one split are within-split copies; groups whose labels disagree
are conflicts. Policies: --leaks drop keeps only the members in the earliest split of the
group (train, then val, then test); --within keep-one keeps one per split (the largest file,
usually the least compressed); --conflicts review keeps one per split and label and lists them
in DST/conflicts.csv (apply decisions with `data_tools.mislabel --review`), drop drops the
whole group, keep treats labels as if they agreed. DST/duplicates.csv lists every group member.
"""
import collections
import functools
import hashlib
import os
import sys

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from data_tools import common
from fer_jax.data import folders
from fer_jax.data.progress import Progress

HASHES = {"phash": imagehash.phash, "dhash": imagehash.dhash, "ahash": imagehash.average_hash,
          "whash": imagehash.whash}
MAX_THRESHOLD = 31  # t + 1 bands of 64 bits must each keep 2 bits
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}  # which copy of a leaked group survives
# Candidate pairs verified at once: bounds the temporary arrays to a few hundred MB.
PAIR_CHUNK = 4_000_000


# ---------------------------------------------------------------------------- hashing

def add_hash_flags(parser):
  parser.add_argument("--hash", choices=sorted(HASHES), default="phash", help="perceptual hash")
  parser.add_argument("--threshold", type=int, default=6,
                      help=f"max differing bits (of 64) between near duplicates, 0..{MAX_THRESHOLD}")
  parser.add_argument("--no-mirror", dest="mirror", action="store_false",
                      help="do not match horizontally flipped copies (matching them: %(default)s)")
  parser.add_argument("--shift", type=int, default=0, choices=(0, 1, 2),
                      help="also match copies translated by up to this many pixels (costs "
                           "(2 shift + 1)^2 - 1 extra hashes per image)")
  parser.add_argument("--image-size", type=int, default=48,
                      help="side the images are decoded to before hashing (the dataset's size)")


def check_hash_flags(args):
  if not 0 <= args.threshold <= MAX_THRESHOLD:
    raise common.ToolError(f"--threshold: must be in 0..{MAX_THRESHOLD}, got {args.threshold}")
  if args.image_size < 8:
    raise common.ToolError(f"--image-size: must be at least 8, got {args.image_size}")


def _translate(pixels, dy, dx):
  """The image moved by (dy, dx) pixels, the uncovered border filled with its edge pixels."""
  h, w = pixels.shape[:2]
  padded = np.pad(pixels, ((abs(dy), abs(dy)), (abs(dx), abs(dx))) + ((0, 0),) * (pixels.ndim - 2),
                  mode="edge")
  return padded[abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w]


def variant_kinds(mirror, shift):
  """Names of the transformed copies hashed besides the image itself, in column order."""
  offsets = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)
             if (dy, dx) != (0, 0)]
  return (["mirrored"] if mirror else []) + [f"shifted {dy:+d},{dx:+d}" for dy, dx in offsets]


def _variant(pixels, kind):
  if kind == "mirrored":
    return pixels[:, ::-1]
  dy, dx = (int(v) for v in kind.split()[1].split(","))
  return _translate(pixels, dy, dx)


def _pack(bits):
  """bool [N, 64] -> uint64 [N] (first bit most significant)."""
  return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)


def _hash_chunk(images, method, kinds):
  fn = HASHES[method]
  digests = np.zeros(len(images), np.uint64)
  bits = np.zeros((len(kinds) + 1, len(images), 64), bool)
  for k, pixels in enumerate(images):
    pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    digests[k] = int.from_bytes(hashlib.blake2b(pixels.tobytes(), digest_size=8).digest(), "big")
    for v, kind in enumerate([None] + kinds):
      bits[v, k] = fn(Image.fromarray(pixels if kind is None else np.ascontiguousarray(
          _variant(pixels, kind)))).hash.ravel()
  codes = np.stack([_pack(b) for b in bits], axis=1)
  return digests, codes[:, 0], codes[:, 1:]


class Hashes:
  """Per image: `digest` of its pixels, perceptual hash `code`, and `variants` [N, V]: the hashes
  of its transformed copies named by `kinds` (mirror image, small translations)."""

  def __init__(self, digest, code, variants, kinds):
    self.digest, self.code, self.variants, self.kinds = digest, code, variants, list(kinds)

  def __len__(self):
    return len(self.code)


def hash_images(images, method="phash", mirror=True, shift=0, workers=1, label="hashing"):
  """uint8 [N, H, W, C] -> Hashes. imagehash works one image at a time, so chunks go to processes."""
  kinds = variant_kinds(mirror, shift)
  progress = Progress(label, len(images))
  # The loader's pool: processes, or threads once JAX is imported (see folders.executor).
  parts = dict(folders.map_chunks(functools.partial(_hash_chunk, method=method, kinds=kinds),
                                  images, 256, workers, progress))
  progress.close()
  ordered = [parts[s] for s in sorted(parts)] or [
      (np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros((0, len(kinds)), np.uint64))]
  return Hashes(*(np.concatenate([p[f] for p in ordered]) for f in range(3)), kinds)


def hash_files(paths, args, label="hashing"):
  """Decodes and hashes files -> (Hashes of the readable ones, ok mask [N], [(path, reason)])."""
  images, ok, errors = folders.decode_many(paths, args.image_size, 1, "bilinear", args.workers,
                                           label="decoding")
  hashes = hash_images(images[ok], args.hash, args.mirror, args.shift, args.workers, label)
  return hashes, ok, errors


# ---------------------------------------------------------------------------- pairs and groups

def hamming(a, b):
  return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def _bands(threshold):
  """(shift, mask) of threshold + 1 bands covering the 64 bits."""
  m = threshold + 1
  widths = [64 // m + (1 if b < 64 % m else 0) for b in range(m)]
  shifts = np.cumsum([0] + widths[:-1])
  return [(np.uint64(s), np.uint64((1 << w) - 1)) for s, w in zip(shifts, widths)]


def _expand(lo, hi):
  """Yields (query, position) arrays covering every query q and position in [lo[q], hi[q]).

  In chunks of about PAIR_CHUNK pairs, so memory stays bounded however many candidates there are.
  """
  count = hi - lo
  cum = np.cumsum(count)
  start = 0
  while start < len(count):
    base = cum[start - 1] if start else 0
    stop = max(start + 1, int(np.searchsorted(cum, base + PAIR_CHUNK, "right")))
    c = count[start:stop]
    query = np.repeat(np.arange(start, stop), c)
    offset = np.arange(len(query)) - np.repeat(np.cumsum(c) - c, c)
    yield query, lo[query] + offset
    start = stop


def near_pairs(a, threshold, b=None):
  """(i, j, distance) for every pair with at most `threshold` differing bits between a[i] and b[j].

  Without `b`: pairs within `a`, i < j. Multi-index hashing: split the 64 bits into threshold + 1
  bands; by the pigeonhole principle two codes within the threshold agree exactly on at least one
  band, so the candidates are the pairs sharing a band value (found by sorting, no Python loop
  over pairs), verified by popcount and reported from the first band they share.
  """
  self_join = b is None
  b = a if self_join else b
  bands = _bands(threshold)
  found = []
  for k, (shift, mask) in enumerate(bands):
    key_a, key_b = (a >> shift) & mask, (b >> shift) & mask
    order = np.argsort(key_b, kind="stable")
    sorted_b = key_b[order]
    if self_join:
      rank = np.empty(len(order), np.int64)
      rank[order] = np.arange(len(order))
      lo = rank + 1  # partners come later in the sorted order: each pair once
      hi = np.searchsorted(sorted_b, key_a, "right")
    else:
      lo = np.searchsorted(sorted_b, key_a, "left")
      hi = np.searchsorted(sorted_b, key_a, "right")
    for i, pos in _expand(lo, hi):
      j = order[pos]
      x = a[i] ^ b[j]
      keep = np.bitwise_count(x) <= threshold
      for s, m in bands[:k]:
        keep &= ((x >> s) & m) != 0  # shares an earlier band: already reported there
      i, j, x = i[keep], j[keep], x[keep]
      if self_join:
        i, j = np.minimum(i, j), np.maximum(i, j)
      found.append((i, j, np.bitwise_count(x).astype(np.int64)))
  if not found:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
  i, j, d = (np.concatenate(f) for f in zip(*found))
  order = np.lexsort((j, i))
  return i[order], j[order], d[order]


def duplicate_pairs(hashes, threshold, other=None):
  """Index arrays (i, j) of the duplicate pairs within `hashes` (i < j) or between hashes[i] and other[j].

  A pair is a duplicate when its digests are equal, its codes differ in at most `threshold`
  bits, or one image's code is that close to a variant (mirror, shift) of the other's.
  """
  self_join = other is None
  other = hashes if self_join else other
  pairs = [near_pairs(hashes.code, threshold, None if self_join else other.code)[:2]]
  for v in range(len(hashes.kinds)):
    pairs.append(near_pairs(hashes.code, threshold, other.variants[:, v])[:2])
    if not self_join:  # within one set, the pair (j, i) above covers this direction
      pairs.append(near_pairs(hashes.variants[:, v], threshold, other.code)[:2])
  order = np.argsort(other.digest, kind="stable")
  lo = np.searchsorted(other.digest[order], hashes.digest, "left")
  hi = np.searchsorted(other.digest[order], hashes.digest, "right")
  pairs += [(i, order[pos]) for i, pos in _expand(lo, hi)]  # exact copies, even at threshold 0
  i = np.concatenate([p[0] for p in pairs]).astype(np.int64)
  j = np.concatenate([p[1] for p in pairs]).astype(np.int64)
  if self_join:
    i, j = np.minimum(i, j), np.maximum(i, j)
    keep = i != j  # an image always resembles itself, its own mirror and shifts
    i, j = i[keep], j[keep]
  key = np.unique(i * len(other) + j)
  return key // len(other), key % len(other)


def group_labels(hashes, threshold):
  """Connected components of the duplicate relation -> group id per image (int64 [N])."""
  n = len(hashes)
  i, j = duplicate_pairs(hashes, threshold)
  graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
  return connected_components(graph, directed=False)[1].astype(np.int64)


def match(hashes, a, others):
  """Distance and kind ('exact' | 'near' | 'mirrored' | 'shifted ...') from image a to `others`."""
  others = np.asarray(others)
  direct = hamming(hashes.code[a], hashes.code[others])
  # either image may be the transformed copy of the other
  variant = np.minimum(hamming(hashes.code[a], hashes.variants[others]),
                       hamming(hashes.variants[a][None, :], hashes.code[others][:, None]))
  kinds = np.array(["near"] + hashes.kinds)
  all_distances = np.concatenate([direct[:, None], variant], axis=1)
  best = np.argmin(all_distances, axis=1)  # ties -> 'near'
  exact = hashes.digest[others] == hashes.digest[a]
  distance = np.where(exact, 0, all_distances[np.arange(len(others)), best])
  return distance, np.where(exact, "exact", kinds[best])


def duplicate_groups(hashes, threshold):
  """Lists of member indices (sorted) of every group with two or more images, in index order."""
  labels = group_labels(hashes, threshold)
  members = collections.defaultdict(list)
  for idx, g in enumerate(labels):
    members[g].append(idx)
  return [m for m in sorted(members.values()) if len(m) > 1]


# ---------------------------------------------------------------------------- policies

def _closest(hashes, a, candidates):
  distance, kind = match(hashes, a, candidates)
  best = int(np.argmin(distance))
  return candidates[best], int(distance[best]), str(kind[best])


def _best_copy(records, members):
  """The member to keep: the largest file (least compressed / largest original), then by path."""
  return min(members, key=lambda m: (-records[m].size, records[m].path))


def resolve_group(gid, members, records, hashes, args, classes):
  """Decides a duplicate group: {member: (action, reason, score)}, report rows, review rows."""
  split = {m: records[m].split for m in members}
  label = {m: records[m].class_name for m in members}
  labels = sorted(set(label.values()), key=classes.index)
  conflict = len(labels) > 1
  outcome, findings = {}, {m: [] for m in members}

  for m in members:  # leakage is reported whatever the policy
    earlier = [o for o in members if SPLIT_ORDER[split[o]] < SPLIT_ORDER[split[m]]]
    if earlier:
      twin, distance, kind = _closest(hashes, m, earlier)
      findings[m].append(f"leak {split[m]}<-{split[twin]}")
      if args.leaks == "drop":  # only the members in the group's earliest split stay
        outcome[m] = ("dropped", f"leak: {kind} copy of {records[twin].path} ({split[twin]})", distance)
  if conflict:
    for m in members:
      findings[m].append("label conflict")
    if args.conflicts == "drop":
      for m in members:
        outcome[m] = ("dropped", f"label conflict in duplicate group ({'/'.join(labels)})", "")
  alive = [m for m in members if m not in outcome]

  per_split = collections.Counter(split.values())
  for m in members:
    if per_split[split[m]] > 1:
      findings[m].append(f"within-split copy ({split[m]})")
  if args.within == "keep-one":
    buckets = collections.defaultdict(list)
    for m in alive:  # with --conflicts review, each label keeps a copy for the reviewer
      buckets[split[m], label[m] if (conflict and args.conflicts == "review") else ""].append(m)
    for bucket in buckets.values():
      keep = _best_copy(records, bucket)
      for m in bucket:
        if m != keep:
          _, distance, kind = _closest(hashes, m, [keep])
          outcome[m] = ("dropped", f"within-split {kind} copy of {records[keep].path}", distance)
  alive = [m for m in members if m not in outcome]
  for m in alive:
    outcome[m] = ("kept", f"kept from a duplicate group of {len(members)}", "")

  report = []
  for m in members:
    others = [o for o in members if o != m]
    twin, distance, kind = _closest(hashes, m, others)
    report.append({"group": gid, "file": records[m].path, "split": split[m], "class": label[m],
                   "twin": records[twin].path, "distance": distance, "match": kind,
                   "findings": "; ".join(findings[m]), "action": outcome[m][0]})
  review = []
  alive_labels = sorted({label[m] for m in alive}, key=classes.index)
  if args.conflicts == "review" and len(alive_labels) > 1:
    for m in alive:
      votes = collections.Counter(label[o] for o in alive if label[o] != label[m])
      suggested = max(votes, key=lambda c: (votes[c], -classes.index(c)))
      review.append({"group": gid, "record": m, "given_label": label[m], "suggested_label": suggested,
                     "reason": f"label conflict in duplicate group {gid} ({'/'.join(alive_labels)})"})
  return outcome, report, review


# ---------------------------------------------------------------------------- the tool

def summarise(reports, classes, args, num_groups):
  lines = [f"hash {args.hash}, threshold {args.threshold}, mirrored copies "
           f"{'matched' if args.mirror else 'ignored'}, shifts up to {args.shift} px: "
           f"{num_groups:,} duplicate groups, "
           f"{len(reports):,} images in them"]
  kinds = collections.Counter(r["match"].split()[0] for r in reports)
  if kinds:
    # a very large group usually means chained false matches: lower --threshold
    largest = max(collections.Counter(r["group"] for r in reports).values())
    lines.append("  closest twin: " + ", ".join(f"{k} {n:,}" for k, n in kinds.most_common())
                 + f"; largest group {largest} images")
  leaks = collections.Counter(f.split()[1] for r in reports for f in r["findings"].split("; ")
                              if f.startswith("leak"))
  lines.append(f"cross-split leakage: {sum(leaks.values()):,} images"
               + "".join(f", {d} {n:,}" for d, n in sorted(leaks.items()))
               + f" (--leaks {args.leaks})")
  within = collections.Counter(r["split"] for r in reports if "within-split" in r["findings"])
  lines.append("within-split copies: " + (", ".join(f"{s} {within[s]:,} images" for s in common.SPLITS
                                                   if within[s]) or "none")
               + f" (--within {args.within})")
  group_classes = collections.defaultdict(set)
  for r in reports:
    group_classes[r["group"]].add(r["class"])
  pairs = collections.Counter()
  for gid in {r["group"] for r in reports if "label conflict" in r["findings"]}:
    pairs["/".join(sorted(group_classes[gid], key=classes.index))] += 1
  lines.append(f"label conflicts: {sum(pairs.values()):,} groups"
               + "".join(f", {p} {n:,}" for p, n in pairs.most_common())
               + f" (--conflicts {args.conflicts})")
  return lines


def plan_dedup(args):
  check_hash_flags(args)
  common.check_output(args.out, args.overwrite, SRC=args.src)
  classes = list(args.classes)
  tree = common.read_tree(args.src, args.classes)
  records = tree.files
  hashes, ok, errors = hash_files([r.path for r in records], args)
  readable, unreadable = common.split_readable(tree, records, ok, errors)
  entries = list(tree.not_read) + unreadable

  groups = duplicate_groups(hashes, args.threshold)
  decided, reports, reviews = {}, [], []
  for n, members in enumerate(groups, 1):
    outcome, report, review = resolve_group(f"g{n}", members, readable, hashes, args, classes)
    for m, (action, reason, score) in outcome.items():
      decided[m] = common.entry_for(tree, readable[m], action, reason=reason, group=f"g{n}", score=score)
    reports += report
    reviews += review
  for m, r in enumerate(readable):
    entries.append(decided.get(m) or common.entry_for(tree, r, "kept"))
  entries.sort(key=lambda e: e.source_path)
  common.resolve_name_clashes(entries)

  new_path = {e.source_path: e.new_path for e in entries}
  review_rows = [{"rank": k, "file": new_path[readable[v["record"]].path],
                  "split": readable[v["record"]].split, "given_label": v["given_label"],
                  "suggested_label": v["suggested_label"], "score": "", "reason": v["reason"],
                  "decision": ""} for k, v in enumerate(reviews, 1)]
  summary = summarise(reports, classes, args, len(groups))
  if review_rows:
    summary.append(f"  {len(review_rows)} conflicting images listed in conflicts.csv for review "
                   "(paths relative to DST)")
  summary += common.split_class_table(entries, classes, "result (images per class and split):")
  reports_out = {"duplicates.csv": common.csv_text(reports, ["group", "file", "split", "class", "twin",
                                                             "distance", "match", "findings", "action"])}
  if args.conflicts == "review":
    reports_out["conflicts.csv"] = common.review_csv(review_rows)
  options = {k: getattr(args, k) for k in ("hash", "threshold", "mirror", "shift", "image_size", "leaks",
                                           "within", "conflicts", "classes")}
  return common.Plan("dedup", {"SRC": tree.root}, os.path.abspath(args.out), options, entries,
                     summary, reports_out)


def build_parser():
  p = common.tool_parser("dedup", __doc__.split("\n")[0])
  add_hash_flags(p)
  p.add_argument("--leaks", choices=("drop", "keep"), default="drop",
                 help="drop: keep only the copies in the earliest split of a group (train, val, test)")
  p.add_argument("--within", choices=("keep-one", "keep-all"), default="keep-one",
                 help="keep-one: one copy per split (the largest file)")
  p.add_argument("--conflicts", choices=("review", "drop", "keep"), default="review",
                 help="groups whose labels disagree: review = keep one per label and list them in "
                      "conflicts.csv; drop = drop the group; keep = ignore the labels")
  return p


def main(argv=None):
  return common.run_main(lambda args: common.finish(plan_dedup(args), args), build_parser(), argv)


if __name__ == "__main__":
  sys.exit(main())
