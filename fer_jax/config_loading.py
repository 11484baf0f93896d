"""Loads a config file the way `--config=path[:variant] --config.a.b=v` does, from code, and checks
every value of a config against the fields' declarations.

`load_config("configs/b_pp.py:quick", {"optim.lr": 1e-3})` imports the file by path, calls
`get_config("quick")`, and applies each override with a type check against the field it
replaces. String values are parsed as on the command line (`"1e-3"`, `"true"`, `"(32, 64)"`);
other values are used as given. Errors are one line naming the file or the field.

Every field of every config is declared once, in configs/common.py: a `Field(default,
"description", rule)` in a table per section (`common.DATA`, `common.MODEL`, ...; fields that
only some models have are in tables of their own, which those configs add with `add_fields`).
The default fixes the field's type; the rule (`at_least(1)`, `one_of("a", "b")`, ...) gives the
check, the error's "must be ..." and the documentation's range or choices. `check_values` always
reads `common.FIELDS`, so a config is checked in full whatever else was imported; it names every
bad value and every field nobody declared, one per line. `python -m fer_jax.config_loading
--fields` prints every declaration as documentation (docs/config_fields.md).
"""

import ast
import dataclasses
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import ml_collections
from ml_collections.config_flags import config_path


class ConfigError(ValueError):
  """A config file or override that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a field's value must be: `test(value)` is True for a valid one; `text` says it;
  `notes` says what the choices mean, for the documentation."""

  test: Callable[[Any], bool]
  text: str
  notes: str = ""


def at_least(low) -> Rule:
  return Rule(lambda v: v >= low, f">= {low}")


def above(low) -> Rule:
  return Rule(lambda v: v > low, f"> {low}")


def fraction(low_open=False, high_open=False) -> Rule:
  """In [0, 1], with either end open: a dropout rate of 1 would leave no signal, a val share of
  0 no val split."""
  low, high = "(" if low_open else "[", ")" if high_open else "]"
  return Rule(
    lambda v: (0 < v if low_open else 0 <= v) and (v < 1 if high_open else v <= 1),
    f"in {low}0, 1{high}",
  )


def one_of(*choices) -> Rule:
  """One of `choices`; or given one dict {choice: what it means}, one of its keys, the meanings
  going into the documentation. A choice written `prefix<name>` accepts `prefix` and any name."""
  notes = ""
  if len(choices) == 1 and isinstance(choices[0], dict):
    notes = "; ".join(f"{c}: {meaning}" for c, meaning in choices[0].items())
    choices = tuple(choices[0])
  exact = [c for c in choices if not (isinstance(c, str) and "<" in c)]
  prefixes = tuple(c.partition("<")[0] for c in choices if c not in exact)

  def test(v):
    return v in exact or (isinstance(v, str) and v.startswith(prefixes))

  return Rule(test, "one of " + " | ".join(map(str, choices)), notes)


def each(rule, min_len=0) -> Rule:
  """A tuple of at least `min_len` elements, each valid under `rule`."""
  need = f"at least {min_len} value(s), each " if min_len else "values each "
  return Rule(lambda v: len(v) >= min_len and all(rule.test(x) for x in v), need + rule.text)


def distinct_names(min_len=0) -> Rule:
  """A tuple of distinct (class) names, at least `min_len` of them."""
  need = f"at least {min_len} distinct class names" if min_len else "distinct class names"
  return Rule(lambda v: len(set(v)) == len(v) >= min_len, need)


_TYPE_NAMES = {bool: "a bool", int: "an int", float: "a number", str: "a string", tuple: "a tuple"}


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field, declared once: `default` (a new config's value; its type is the field's),
  a one-line `doc`, and the `rule` its value must follow (None: any value of the type)."""

  default: Any
  doc: str
  rule: Rule | None = None

  def problem(self, value) -> str | None:
    """What `value` must be, when it is not valid for this field; None when it is."""
    kind = type(self.default)
    if kind is bool:
      typed = isinstance(value, bool)
    elif kind in (int, float):  # an int is a valid float, as ConfigDict lets it be
      numbers = int if kind is int else (int, float)
      typed = isinstance(value, numbers) and not isinstance(value, bool)
    else:  # a tuple read back from JSON is a list
      typed = isinstance(value, (tuple, list) if kind is tuple else kind)
    if not typed:
      return _TYPE_NAMES.get(kind, kind.__name__)
    if self.rule is None:
      return None
    try:
      ok = self.rule.test(value)
    except TypeError:
      ok = False
    return None if ok else self.rule.text


def section(*tables) -> ml_collections.ConfigDict:
  """A new config section with every field of `tables` at its default; a table is
  {name: Field | table}, a nested table making a nested section."""
  return add_fields(ml_collections.ConfigDict(), *tables)


def add_fields(config_section, *tables):
  """Adds every field of `tables` at its default to `config_section` (before it is locked)."""
  for table in tables:
    for name, decl in table.items():
      config_section[name] = decl.default if isinstance(decl, Field) else section(decl)
  return config_section


def declarations(tables, prefix="") -> dict:
  """{"section.field": Field} of nested tables: {name: Field | table | (tables of one section)}.
  A field declared twice (in two tables of a section) is an error."""
  out = {}
  for name, entry in tables.items():
    path = prefix + name
    if isinstance(entry, Field):
      out[path] = entry
      continue
    for table in entry if isinstance(entry, tuple) else (entry,):
      for key, decl in declarations(table, path + ".").items():
        if key in out:
          raise ValueError(f"config field {key} is declared twice")
        out[key] = decl
  return out


def declared_fields() -> dict:
  """Every declared field of every config, {"section.field": Field}, from configs/common.py."""
  # Imported here: configs/common.py builds its tables with this module's helpers.
  from fer_jax.configs import common

  return declarations(common.FIELDS)


def leaves(config, prefix="") -> dict:
  """{"section.field": value} of every value of `config` that is not itself a section."""
  out = {}
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(leaves(value, f"{prefix}{name}."))
    else:
      out[f"{prefix}{name}"] = value
  return out


def check_complete(config):
  """Raises a one-line ConfigError naming every section of configs/common.py's FIELDS that
  `config` lacks, and every field it lacks of a section's first (always present) table; the
  tables of some models only may be absent."""
  from fer_jax.configs import common

  missing = []
  for name, entry in common.FIELDS.items():
    if name not in config:
      missing.append(f"config.{name}")
    elif not isinstance(entry, Field):
      table = entry[0] if isinstance(entry, tuple) else entry
      fields = [k for k, v in table.items() if isinstance(v, Field) and k not in config[name]]
      missing += [f"config.{name}.{k}" for k in fields]
  if missing:
    raise ConfigError(
      f"{', '.join(missing)}: missing from the config get_config() returned; build it on "
      "common.base_config(name) (configs/common.py), which has every section and field"
    )


ABSENT = object()  # a field one of two configs lacks, for field_differences' `same`


def field_differences(before, after, same=None) -> list[str]:
  """['field: before -> after', ...] (values as JSON, "(absent)" for a missing one) for the fields
  of two flat {field: value} dicts that differ, in field order; `same(field, before, after)`
  (ABSENT for a missing value) may declare a difference none."""

  def show(v):
    return "(absent)" if v is ABSENT else json.dumps(v)

  diffs = []
  for field in sorted(before.keys() | after.keys()):
    a, b = before.get(field, ABSENT), after.get(field, ABSENT)
    if a != b and not (same and same(field, a, b)):
      diffs.append(f"{field}: {show(a)} -> {show(b)}")
  return diffs


def check_values(config):
  """Raises ConfigError listing, one per line, every field whose value its declaration does not
  allow (in the declarations' order) and every field of `config` that nobody declared; first, in
  one line, the sections and fields it lacks (`check_complete`)."""
  check_complete(config)
  declared = declared_fields()
  values = leaves(config)
  errors = []
  for field, decl in declared.items():
    if field in values:  # a field of some configs only (a transfer model's, say) may be absent
      need = decl.problem(values[field])
      if need:
        errors.append(f"config.{field}={format_value(values[field])}: must be {need}")
  for field in sorted(values.keys() - declared.keys()):
    errors.append(
      f"config.{field}={format_value(values[field])}: not a declared field "
      "(declare it in configs/common.py)"
    )
  if errors:
    raise ConfigError("\n".join(errors))


def fields_markdown() -> str:
  """Every declared field as a Markdown list by section: type, default, description, rule."""
  lines = [
    "# Config fields",
    "",
    "Generated from the declarations in configs/common.py by "
    "`python -m fer_jax.config_loading --fields`; do not edit by hand.",
  ]
  section_name = None
  for field, decl in declared_fields().items():
    head = field.rpartition(".")[0] or "top level"
    if head != section_name:
      section_name = head
      lines += ["", f"## {head}", ""]
    kind = type(decl.default).__name__
    text = f"- `{field}` ({kind}, default `{decl.default!r}`): {decl.doc}."
    if decl.rule:
      text += f" Must be {decl.rule.text}" + (f" ({decl.rule.notes})." if decl.rule.notes else ".")
    lines.append(text)
  return "\n".join(lines) + "\n"


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
  """ConfigDict checks scalar types on assignment; bools as ints and tuple elements it lets
  through."""
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
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config {path}: get_config() did not return a fer_jax config")
  check_complete(config)
  config.lock()
  apply_overrides(config, overrides or {})
  check_values(config)
  return config


def load_run_config(workdir):
  """The config a run was trained with, rebuilt as training builds one and checked as training
  checks it: `<workdir>/config.json` names the config file (configs/<name>.py, found as
  `resolve_path` finds it) and its variant; `get_config(variant)` gives the fields, each saved value
  is applied as a type-checked override, then `check_values`. A run of a config file outside
  configs/ is rebuilt from its saved values, each checked against its field's declaration. Raises
  a one-line ConfigError naming config.json when it is missing, unreadable or does not fit."""
  from fer_jax.train import workdir_guard

  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise ConfigError(f"{path}: no such file; is {workdir} a fer_jax run?") from None
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path}: unreadable ({e})") from None
  # the declarations' rules: a name that is an identifier is also a safe part of a path below
  top = declared_fields()
  if not isinstance(saved, dict) or any(
    top[f].problem(saved.get(f, "")) for f in ("name", "variant")
  ):
    raise ConfigError(f"{path}: not a fer_jax run's config (no valid name and variant)")
  name, variant = saved["name"], saved.get("variant", "")
  try:
    if os.path.isfile(resolve_path(f"configs/{name}.py")):
      return load_config(f"configs/{name}.py:{variant}", workdir_guard.flat_fields(saved))
    # Trained from a config file of its own: the saved values, checked field by field against
    # the declarations (every field of every config is declared in configs/common.py).
    return _from_declarations(saved)
  except ConfigError as e:
    # The messages speak of command-line overrides; here each is a value saved in config.json.
    detail = "; ".join(str(e).replace("--config.", "").splitlines())
    raise ConfigError(f"{path} does not fit its config's fields: {detail}") from None


def _from_declarations(saved) -> ml_collections.ConfigDict:
  """A locked config of the saved values (JSON lists back to the tuples their fields hold),
  checked as every config is."""
  declared = declared_fields()

  def build(values, prefix):
    config = ml_collections.ConfigDict()
    for name, value in values.items():
      if isinstance(value, dict):
        config[name] = build(value, f"{prefix}{name}.")
      else:
        decl = declared.get(prefix + name)
        is_tuple = decl is not None and isinstance(decl.default, tuple)
        config[name] = tuple(value) if is_tuple and isinstance(value, list) else value
    return config

  config = build(saved, "")
  check_values(config)
  config.lock()
  return config


if __name__ == "__main__":
  if sys.argv[1:] != ["--fields"]:
    sys.exit("usage: python -m fer_jax.config_loading --fields   (every config field, as Markdown)")
  # Through the package's module, whose Field class configs/common.py uses (this one is __main__).
  from fer_jax import config_loading

  print(config_loading.fields_markdown(), end="")
