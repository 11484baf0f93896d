"""What CPU this process runs on, for the conv_impl choice's cache key and the benchmark's output.

Speed figures only compare on the same CPU kind: the convolution that wins on an AVX2 Zen 1 loses
on an AVX-512 Zen 5 (docs/performance.md), so every figure names the CPU it came from.
"""

import dataclasses
import hashlib
import os
import platform

# The flags that decide which kernels run fast, in the order the benchmark prints them.
ISA_FLAGS = (
  "avx2",
  "fma",
  "avx512f",
  "avx512_vnni",
  "avx512_bf16",
  "avx512_fp16",
  "amx_bf16",
  "amx_tile",
)


@dataclasses.dataclass(frozen=True)
class CPU:
  model_name: str
  vendor: str
  family: int | None
  model: int | None
  flags: frozenset
  cores: int
  mhz: float | None  # as /proc/cpuinfo reports it: nominal under most hypervisors, not turbo

  def isa(self):
    return [f for f in ISA_FLAGS if f in self.flags]

  def describe(self):
    family = f"family {self.family} model {self.model}, " if self.family is not None else ""
    clock = f"{self.mhz / 1000:.2f} GHz, " if self.mhz else ""
    return (
      f"{self.model_name} ({family}{clock}{self.cores} cores; {' '.join(self.isa()) or 'no AVX2'})"
    )

  def cache_key(self):
    """Same key: same kernels at the same relative speed. All flags count, hashed for length."""
    flags = hashlib.sha1(" ".join(sorted(self.flags)).encode()).hexdigest()[:10]
    return (
      f"{self.vendor} {self.model_name} f{self.family}m{self.model} flags:{flags} "
      f"cores:{self.cores}"
    )

  def fp32_flop_per_cycle(self) -> int | None:
    """Peak float32 FLOP per cycle per core from the ISA (FMA = 2 FLOP per lane); None if unknown.

    Zen 1 (AMD family 23 before model 0x30) splits 256-bit FMAs in two 128-bit halves; Zen 4
    (family 25) runs AVX-512 on 256-bit units; Zen 2/3 have two 256-bit FMA units; Zen 5 and
    Intel server cores with AVX-512 two 512-bit ones (one on some low-end Xeons: then this is 2x
    too high).
    """
    wide = "avx512f" in self.flags
    if self.vendor == "AuthenticAMD" and self.family is not None:
      if self.family == 23:
        return 16 if self.model < 0x30 else 32
      if self.family == 25:
        return 32
      if self.family >= 26:
        return 64 if wide else 32
    if self.vendor == "GenuineIntel" and "fma" in self.flags:
      return 64 if wide else 32
    return None

  def fp32_peak_flops(self) -> float | None:
    per_cycle = self.fp32_flop_per_cycle()
    return self.cores * self.mhz * 1e6 * per_cycle if per_cycle and self.mhz else None


def _cpuinfo_fields(path="/proc/cpuinfo"):
  """The first processor's `key: value` lines ({} where there is no /proc/cpuinfo)."""
  fields = {}
  try:
    with open(path) as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  return fields


def _int(text):
  return int(text) if text and text.isdigit() else None


def current() -> CPU:
  fields = _cpuinfo_fields()
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  mhz = fields.get("cpu MHz")
  return CPU(
    model_name=fields.get("model name") or platform.processor() or platform.machine(),
    vendor=fields.get("vendor_id", ""),
    family=_int(fields.get("cpu family")),
    model=_int(fields.get("model")),
    flags=frozenset(fields.get("flags", "").split()),
    cores=cores,
    mhz=float(mhz) if mhz else None,
  )
