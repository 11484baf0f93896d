"""conv_impl='auto': the fastest measured implementation per conv layer, cached per CPU; and the
CPU description that keys the cache and the benchmark's peak estimate."""

import json
import os
import re
import time

import jax
import numpy as np
import pytest

from fer_jax.models import cnn
from fer_jax.models.kernels import conv_choice, cpu_conv
from fer_jax.platform import cpu_info

SLOWED = "winograd"
SLOWDOWN_S = 0.05  # far above any of these tiny layers' real times (< 5 ms)


@pytest.fixture
def measuring(tmp_path, monkeypatch):
  """An empty cache in tmp_path, no choices yet, and measurement on for tiny layers with
  optimisations on (the test suite turns them off, which makes `auto` measure nothing)."""
  monkeypatch.setenv(conv_choice.CACHE_DIR_ENV, str(tmp_path))
  monkeypatch.setattr(conv_choice, "_chosen", {})
  monkeypatch.setattr(conv_choice, "MIN_MEASURED_FLOP", 0)
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  yield tmp_path / "conv_choice.json"
  jax.config.update("jax_disable_most_optimizations", before)


def slowed_runners(calls):
  """The real per-layer runners, with SLOWED made SLOWDOWN_S slower; counts the measured layers."""
  real = conv_choice.layer_runners

  def runners(*args):
    calls.append(args)
    out = real(*args)
    fast = out[SLOWED]
    out[SLOWED] = lambda: (time.sleep(SLOWDOWN_S), fast())
    return out

  return runners


def tiny_cnn(conv_impl):
  # Two layer shapes with >= 32 input channels, where Winograd runs and is a real candidate.
  return cnn.CNN(
    num_classes=4,
    widths=(32, 32),
    convs_per_block=1,
    bn_placement="conv_bn_relu",
    pool_after=(True, False),
    block_dropouts=(0.0, 0.0),
    head_pool="gap",
    head_pre_dropout=0.0,
    dense_widths=(),
    dense_bn=False,
    dense_dropouts=(),
    conv_impl=conv_impl,
  )


def train_gradients(model, images):
  variables = model.init(jax.random.key(0), images)

  def loss(p):
    logits, _ = model.apply({**variables, "params": p}, images, train=True, mutable=["batch_stats"])
    return logits.sum()

  return jax.jit(jax.grad(loss))(variables["params"])


def test_auto_never_picks_a_slowed_implementation_and_caches_the_choice(
  measuring, monkeypatch, capsys
):
  calls = []
  monkeypatch.setattr(conv_choice, "layer_runners", slowed_runners(calls))
  images = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 32)).astype(np.float32)
  train_gradients(tiny_cnn("auto"), images)
  choices = conv_choice.chosen()
  # 8x8 and 4x4 layers, each measured once forward only (init, train=False) and once with gradients
  assert len(choices) == 4 and len(calls) == 4, choices
  assert sorted(gradients for *_, gradients in calls) == [False, False, True, True]
  assert sum(key.endswith(", forward only") for key in choices) == 2
  assert SLOWED not in choices.values(), choices
  assert set(choices.values()) <= set(cpu_conv.IMPLS)
  assert capsys.readouterr().err.count("conv_impl auto:") == 4  # printed once per layer and pass
  cached = json.loads(measuring.read_text())[conv_choice.machine_key()]
  assert {key: entry["impl"] for key, entry in cached.items()} == choices
  assert all(entry["ms"][SLOWED] > 1000 * SLOWDOWN_S for entry in cached.values())

  # A new process on the same machine: the file answers, nothing is measured or re-written.
  monkeypatch.setattr(conv_choice, "_chosen", {})
  monkeypatch.setattr(
    conv_choice, "layer_runners", lambda *args: pytest.fail(f"measured {args} again")
  )
  before = measuring.read_text()
  train_gradients(tiny_cnn("auto"), images)
  assert conv_choice.chosen() == choices
  assert "cached in" in capsys.readouterr().err and measuring.read_text() == before


def test_a_model_that_is_not_differentiated_times_the_forward_pass_alone(measuring, monkeypatch):
  """train=False (evaluation and inference, never differentiated): the candidates are the distinct
  forward passes (im2col's is XLA's), timed without gradients, and kept under keys of their own;
  in bfloat16 XLA's is the only one, and nothing is timed."""
  x_shape, kernel_shape = (2, 8, 8, 32), (3, 3, 32, 32)
  forward = conv_choice.layer_runners(x_shape, kernel_shape, np.float32, gradients=False)
  assert set(forward) == {"xla", "winograd"}
  assert all(run().shape == x_shape for run in forward.values())  # outputs, not gradients
  grads = conv_choice.layer_runners(x_shape, kernel_shape, np.float32)
  assert set(grads) == set(cpu_conv.IMPLS)
  assert all([g.shape for g in run()] == [x_shape, kernel_shape] for run in grads.values())

  calls = []
  monkeypatch.setattr(conv_choice, "layer_runners", slowed_runners(calls))
  model = tiny_cnn("auto")
  images = np.zeros((2, 8, 8, 32), np.float32)
  variables = model.init(jax.random.key(0), images)
  jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  assert calls and all(gradients is False for *_, gradients in calls)
  assert all(key.endswith(", forward only") for key in conv_choice.chosen())

  monkeypatch.setattr(conv_choice, "layer_runners", lambda *args: pytest.fail(f"measured {args}"))
  assert conv_choice.choose(x_shape, kernel_shape, jax.numpy.bfloat16, gradients=False) == "xla"


def test_real_timing_picks_the_fastest_of_unequal_runners():
  work = np.ones((200, 200), np.float32)
  runners = {"fast": lambda: work @ work, "slow": lambda: (time.sleep(SLOWDOWN_S), work @ work)}
  seconds = conv_choice.fastest_seconds(runners)
  assert min(seconds, key=seconds.get) == "fast" and seconds["slow"] > SLOWDOWN_S


def out_of_memory():
  raise jax.errors.JaxRuntimeError(
    "RESOURCE_EXHAUSTED: Out of memory allocating 27179089920 bytes."
  )


def test_an_implementation_that_runs_out_of_memory_is_left_out(measuring, monkeypatch, capsys):
  """A layer too large for one implementation's buffers (im2col's patches at a large batch) runs
  with the fastest of the others instead of ending the process; other errors still end it."""
  real = conv_choice.layer_runners
  monkeypatch.setattr(
    conv_choice, "layer_runners", lambda *args: {**real(*args), "im2col": out_of_memory}
  )
  assert conv_choice.choose((2, 8, 8, 32), (3, 3, 32, 32), np.float32) in ("xla", "winograd")
  assert "; out of memory: im2col" in capsys.readouterr().err
  (entry,) = json.loads(measuring.read_text())[conv_choice.machine_key()].values()
  assert set(entry["ms"]) == {"xla", "winograd"}
  monkeypatch.setattr(
    conv_choice, "layer_runners", lambda *args: dict.fromkeys(real(*args), out_of_memory)
  )
  assert conv_choice.choose((4, 8, 8, 32), (3, 3, 32, 32), np.float32) == conv_choice.DEFAULT
  assert "(measured, ms: none; out of memory: " in capsys.readouterr().err

  def broken():
    raise jax.errors.JaxRuntimeError("INTERNAL: a compiler bug")

  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
    conv_choice.fastest_seconds({"xla": lambda: None, "broken": broken})


def test_a_program_larger_than_the_available_memory_is_never_run(measuring, monkeypatch, capsys):
  """XLA's estimate of each candidate's program is held against the host's available memory before
  the candidate runs: Linux's OOM killer, not an exception, ends a process that outgrows it."""
  x_shape, kernel_shape = (16, 16, 16, 32), (3, 3, 32, 32)
  input_bytes = 4 * int(np.prod(x_shape))
  # im2col's patch matrix alone is 9 inputs; xla's program (input gradient and output) about 3.
  monkeypatch.setattr(conv_choice, "available_memory_bytes", lambda: 8 * input_bytes)
  runners = conv_choice.layer_runners(x_shape, kernel_shape, np.float32)
  assert "xla" in runners and "im2col" not in runners, runners
  monkeypatch.setattr(conv_choice, "available_memory_bytes", lambda: 0)
  assert conv_choice.layer_runners(x_shape, kernel_shape, np.float32) == {}
  assert conv_choice.choose(x_shape, kernel_shape, np.float32) == conv_choice.DEFAULT
  assert "(measured, ms: none; out of memory: xla, im2col, winograd" in capsys.readouterr().err


def test_available_memory_is_the_hosts():
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  assert 0 < conv_choice.available_memory_bytes() <= ram


def test_the_layer_benchmark_prints_its_candidates_and_what_ran_out_of_memory(monkeypatch, capsys):
  """benchmarks/conv_layers.py: one column per candidate of the dtype (no winograd in bfloat16),
  "out of memory" where a candidate could not run, and then no sum for it."""
  from absl import flags

  from benchmarks import conv_layers

  monkeypatch.setattr(conv_layers, "LAYERS", (("m", 8, 32, 32), ("m", 4, 32, 32)))
  monkeypatch.setattr(
    conv_choice, "layer_runners", lambda *args: {"xla": lambda: None, "im2col": out_of_memory}
  )
  flags.FLAGS(["conv_layers", "--dtype=bfloat16", "--repeats=2"])
  try:
    conv_layers.main([])
  finally:
    flags.FLAGS.unparse_flags()
  rows = capsys.readouterr().out.splitlines()[3:]
  assert rows[0].split() == ["model", "layer", "xla", "im2col"]
  for row, layer in zip(rows[1:3], ("8x8, 32 -> 32", "4x4, 32 -> 32")):
    assert re.fullmatch(rf"m +{layer} +0\.0 / +0\.0 +out of memory", row), row
  assert re.fullmatch(r"m +sum of fastest +0\.0 +nan", rows[3].rstrip()), rows[3]


def test_the_layer_benchmark_times_forward_passes_alone_when_asked(monkeypatch, capsys):
  from absl import flags

  from benchmarks import conv_layers

  monkeypatch.setattr(conv_layers, "LAYERS", (("m", 8, 32, 32),))
  calls = []
  monkeypatch.setattr(
    conv_choice,
    "layer_runners",
    lambda *args: calls.append(args) or {"xla": lambda: None, "winograd": lambda: None},
  )
  flags.FLAGS(["conv_layers", "--forward_only", "--repeats=1"])
  try:
    conv_layers.main([])
  finally:
    flags.FLAGS.unparse_flags()
  out = capsys.readouterr().out.splitlines()
  assert "float32, forward only;" in out[2]
  assert out[3].split() == ["model", "layer", "xla", "winograd"]
  assert calls == [((64, 8, 8, 32), (3, 3, 32, 32), "float32", False)]


def test_an_explicit_conv_impl_is_never_measured(measuring, monkeypatch):
  monkeypatch.setattr(
    conv_choice, "choose", lambda *args: pytest.fail("auto resolution for an explicit impl")
  )
  train_gradients(tiny_cnn("im2col"), np.zeros((2, 8, 8, 32), np.float32))
  assert not measuring.exists()


def test_unwritable_cache_keeps_choices_for_the_process(measuring, tmp_path, monkeypatch, capsys):
  (tmp_path / "a_file").write_text("")
  # cannot be a directory
  monkeypatch.setenv(conv_choice.CACHE_DIR_ENV, str(tmp_path / "a_file" / "cache"))
  monkeypatch.setattr(conv_choice, "layer_runners", slowed_runners([]))
  first = conv_choice.choose((2, 8, 8, 32), (3, 3, 32, 8), np.float32)
  second = conv_choice.choose((2, 4, 4, 32), (3, 3, 32, 8), np.float32)
  assert SLOWED not in (first, second)
  assert capsys.readouterr().err.count("cannot write") == 1
  assert conv_choice.choose((2, 8, 8, 32), (3, 3, 32, 8), np.float32) == first  # from memory


def test_a_corrupt_cache_file_is_ignored_and_replaced(measuring, monkeypatch, capsys):
  measuring.write_text("{not json")
  monkeypatch.setattr(conv_choice, "layer_runners", slowed_runners([]))
  impl = conv_choice.choose((2, 8, 8, 32), (3, 3, 32, 8), np.float32)
  assert "ignoring unreadable" in capsys.readouterr().err
  assert (
    json.loads(measuring.read_text())[conv_choice.machine_key()]["2x8x8x32 -> 8, 3x3, float32"][
      "impl"
    ]
    == impl
  )


def test_nothing_is_measured_for_small_layers_or_unoptimised_programs(monkeypatch):
  big, kernel = (64, 48, 48, 64), (3, 3, 64, 64)  # B++'s second conv at batch 64: 10.9 GFLOP
  monkeypatch.setattr(conv_choice, "layer_runners", lambda *args: pytest.fail("measured"))
  before = jax.config.read("jax_disable_most_optimizations")
  try:
    jax.config.update("jax_disable_most_optimizations", True)
    assert not conv_choice.worth_measuring(big, kernel)
    jax.config.update("jax_disable_most_optimizations", False)
    assert conv_choice.worth_measuring(big, kernel)
    assert not conv_choice.worth_measuring((1, 48, 48, 64), kernel)  # batch-1 inference
    assert conv_choice.choose((1, 48, 48, 64), kernel, np.float32) == conv_choice.DEFAULT
  finally:
    jax.config.update("jax_disable_most_optimizations", before)


def cpu(vendor, family, model, flags):
  return cpu_info.CPU("test", vendor, family, model, frozenset(flags.split()), cores=2, mhz=2000.0)


def test_fp32_peak_per_cpu_kind():
  # Zen 1: 128-bit FMA halves
  assert cpu("AuthenticAMD", 23, 1, "avx2 fma").fp32_flop_per_cycle() == 16
  assert cpu("AuthenticAMD", 23, 0x31, "avx2 fma").fp32_flop_per_cycle() == 32  # Zen 2
  assert cpu("AuthenticAMD", 25, 0x11, "avx2 fma avx512f").fp32_flop_per_cycle() == 32  # Zen 4
  # Zen 5
  assert cpu("AuthenticAMD", 26, 2, "avx2 fma avx512f avx512_bf16").fp32_flop_per_cycle() == 64
  assert cpu("GenuineIntel", 6, 143, "avx2 fma avx512f").fp32_flop_per_cycle() == 64
  assert cpu("GenuineIntel", 6, 85, "avx2 fma").fp32_flop_per_cycle() == 32
  assert cpu("", None, None, "").fp32_peak_flops() is None
  assert cpu("AuthenticAMD", 23, 1, "avx2 fma").fp32_peak_flops() == 2 * 2.0e9 * 16


def test_this_cpu_is_described_and_keys_the_cache():
  here = cpu_info.current()
  assert here.cores >= 1 and here.model_name
  assert here.describe().startswith(here.model_name)
  assert here.cache_key() in conv_choice.machine_key()
  assert (
    cpu("AuthenticAMD", 23, 1, "avx2 fma").cache_key()
    != cpu("AuthenticAMD", 26, 2, "avx2 fma").cache_key()
  )
