"""Loads a config file the way `--config=path[:variant] --config.a.b=v` does, from code.

`load_config("configs/b_pp.py:quick", {"optim.lr": 1e-3})` imports the file by path, calls
`get_config("quick")`, and applies each override with a type check against the field it
replaces. String values are parsed as on the command line (`"1e-3"`, `"true"`, `"(32, 64)"`);
other values are used as given. Errors are one line naming the file or the field.

Valid values are declared next to the fields, in the config files: `valid("train",
batch_size=at_least(1), ...)` right after the section's fields (configs/common.py). `check_values`
tests every declared field a config has, before a run creates anything, and lists every bad
value on its own line.
"""

import ast
import dataclasses
import importlib.util
import os

from ml_collections.config_flags import config_path


class ConfigError(ValueError):
  """A config file or override that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a field's value must be: `test(value)` is True for a valid one; `text` says it."""

  test: object
  text: str


def at_least(low):
  return Rule(lambda v: v >= low, f">= {low}")


def above(low):
  return Rule(lambda v: v > low, f"> {low}")


def fraction(high_open=False):
  """[0, 1], or [0, 1) with `high_open` (dropout rates, smoothing: 1 would leave no signal)."""
  if high_open:
    return Rule(lambda v: 0 <= v < 1, "in [0, 1)")
  return Rule(lambda v: 0 <= v <= 1, "in [0, 1]")


def one_of(*choices):
  return Rule(lambda v: v in choices, "one of " + " | ".join(map(str, choices)))


def each(rule, min_len=0):
  """A tuple of at least `min_len` elements, each valid under `rule`."""
  need = f"at least {min_len} value(s), each " if min_len else "values each "
  return Rule(lambda v: len(v) >= min_len and all(rule.test(x) for x in v), need + rule.text)


# "section.field" -> Rule, filled by `valid` as the config modules are imported.
VALID = {}


def valid(section, **rules):
  """Declares the valid values of fields of `section` ("train", "data", ...); see the module doc."""
  for field, rule in rules.items():
    VALID[f"{section}.{field}"] = rule


def check_values(config):
  """Raises ConfigError listing, one per line, every declared field whose value is not valid."""
  errors = []
  for field, rule in VALID.items():
    try:
      value = config_path.get_value(field, config)
    except (KeyError, AttributeError):
      continue  # a field this config does not have (rules of another config file)
    try:
      ok = rule.test(value)
    except TypeError:
      ok = False
    if not ok:
      errors.append(f"config.{field}={format_value(value)}: must be {rule.text}")
  if errors:
    raise ConfigError("\n".join(errors))


def parse_overrides(items):
  """["optim.lr=1e-3", ...] (the `--set` / `--config.` syntax) -> {"optim.lr": "1e-3", ...}."""
  out = {}
  for item in items:
    field, sep, value = item.partition("=")
    if not sep or not field:
      raise ConfigError(f"override {item!r}: expected field=value, e.g. optim.lr=1e-3")
    out[field.strip()] = value
  return out


def format_value(value):
  """A value as `--config.x=` text that parses back to it (here and in config_flags)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (tuple, list)):
    return "(" + ", ".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def _parse_text(field, text, current):
  """Command-line text -> a value of the type the field holds now."""
  if isinstance(current, str):
    return text
  if isinstance(current, bool) and text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    value = ast.literal_eval(text)
  except (SyntaxError, ValueError):
    raise ConfigError(
      f"--config.{field}={text}: not a valid {type(current).__name__} (the field holds {current!r})"
    ) from None
  if isinstance(current, tuple) and isinstance(value, (int, float, str)):
    value = (value,)  # "--config.model.widths=64" means a one-element tuple, as in config_flags
  return value


def _check_type(field, value, current):
  """ConfigDict checks scalar types on assignment; bools as ints and tuple elements it lets through."""
  if isinstance(value, bool) and isinstance(current, int) and not isinstance(current, bool):
    raise ConfigError(f"--config.{field}: expected an int, got the bool {value!r}")
  if isinstance(current, tuple) and current:
    if not isinstance(value, (tuple, list)):
      raise ConfigError(f"--config.{field}: expected a tuple like {current!r}, got {value!r}")
    kinds = {type(v) for v in current}
    numeric = kinds <= {int, float}
    for v in value:
      ok = (
        (isinstance(v, (int, float)) and not isinstance(v, bool)) if numeric else type(v) in kinds
      )
      if not ok:
        raise ConfigError(f"--config.{field}: element {v!r} does not match the field's {current!r}")


def apply_overrides(config, overrides):
  """Sets each field=value of `overrides` (a dict, or "field=value" strings) on `config`."""
  if not isinstance(overrides, dict):
    overrides = parse_overrides(overrides)
  for field, value in overrides.items():
    try:
      current = config_path.get_value(field, config)
    except (KeyError, AttributeError) as e:
      hint = str(e.args[0]).split("\n")[1:]  # ConfigDict adds 'Did you mean "lr" ...?'
      raise ConfigError(" ".join([f"--config.{field}: no such config field."] + hint)) from None
    if isinstance(value, str):
      value = _parse_text(field, value, current)
    _check_type(field, value, current)
    try:
      config_path.set_value(field, config, value)
    except TypeError as e:
      raise ConfigError(f"--config.{field}: {e}") from None
  return config


def resolve_path(path):
  """`path` as given, or for a relative `configs/...` path that is not here, the study's config of
  that name shipped with fer_jax (`fer_jax.configs`): the same commands work outside a checkout."""
  bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), path)
  if (
    not os.path.isabs(path)
    and not os.path.exists(path)
    and path.startswith("configs/")
    and os.path.exists(bundled)
  ):
    return bundled
  return path


def import_file(path, function="get_config"):
  """Imports a config (or sweep spec) file by path; it must define `function`."""
  # A fresh module per load: config_flags reuses one module name, so a file without
  # get_config() would silently get the previously loaded file's.
  path = resolve_path(path)
  if not os.path.isfile(path):
    raise ConfigError(f"config {path}: no such file")
  spec = importlib.util.spec_from_file_location(f"_fer_jax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, function):
    raise ConfigError(f"config {path}: defines no {function}(arg)")
  return module


def load_config(spec, overrides=None):
  """Config of `spec` ("path/to/config.py[:variant]") with `overrides` applied; locked."""
  path, _, variant = spec.partition(":")
  module = import_file(path)
  try:
    config = module.get_config(variant or None)
  except ValueError as e:  # e.g. an unknown variant
    raise ConfigError(f"config {spec}: {e}") from None
  if not hasattr(config, "train"):
    raise ConfigError(f"config {path}: get_config() did not return a fer_jax config")
  config.lock()
  apply_overrides(config, overrides or {})
  check_values(config)
  return config


def load_run_config(workdir):
  """The config a run was trained with, rebuilt as training builds one and checked as training
  checks it: `<workdir>/config.json` names the config file (configs/<name>.py, found as
  `resolve_path` finds it) and its variant; `get_config(variant)` gives the fields, each saved value
  is applied as a type-checked override, then `check_values`. Raises a one-line ConfigError naming
  config.json when it is missing, unreadable or does not fit its config file."""
  import json

  from fer_jax.train import workdir_guard

  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise ConfigError(f"{path}: no such file; is {workdir} a fer_jax run?") from None
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path}: unreadable ({e})") from None
  name = saved.get("name") if isinstance(saved, dict) else None
  variant = saved.get("variant", "") if isinstance(saved, dict) else None
  if not (isinstance(name, str) and name.isidentifier() and isinstance(variant, str)):
    raise ConfigError(f"{path}: not a fer_jax run's config (no valid name and variant)")
  if not os.path.isfile(resolve_path(f"configs/{name}.py")):
    raise ConfigError(
      f"{path} names config {name!r}, but there is no configs/{name}.py to build it"
    )
  try:
    return load_config(f"configs/{name}.py:{variant}", workdir_guard.flat_fields(saved))
  except ConfigError as e:
    # The messages speak of command-line overrides; here each is a value saved in config.json.
    detail = "; ".join(str(e).replace("--config.", "").splitlines())
    raise ConfigError(f"{path} does not fit configs/{name}.py: {detail}") from None
