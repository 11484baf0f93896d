"""Every config file, every variant: checked in full against the field declarations of
configs/common.py, every field declared, every declaration used; the generated field docs."""

import glob
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from fer_jax import config_loading
from fer_jax.config_loading import Field, at_least, one_of
from fer_jax.configs import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def variants(module):
  """Every variant `module.get_config` knows (its error for an unknown one lists them)."""
  with pytest.raises(ValueError, match="known: ") as e:
    module.get_config("no-such-variant")
  return re.search(r"known: (.*)$", str(e.value)).group(1).split(", ")


def every_config():
  """{spec: config} for every config file in configs/, alone, with each variant, and with each
  variant combined with quick."""
  configs = {}
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    with open(path) as f:
      if "def get_config(" not in f.read():
        continue  # common.py, transfer_common.py, study.py (a sweep spec)
    names = variants(config_loading.import_file(path))
    for arg in ["", *names, *(f"{v},quick" for v in names if v != "quick")]:
      spec = f"configs/{os.path.basename(path)}" + (f":{arg}" if arg else "")
      configs[spec] = config_loading.load_config(os.path.join(ROOT, spec))
  return configs


@pytest.fixture(scope="module")
def configs():
  return every_config()


def test_every_config_file_and_variant_is_found(configs):
  assert {"configs/model_0.py", "configs/b_pp.py:quick", "configs/color.py:rgb,quick"} <= set(
    configs
  )
  assert {"configs/vgg16.py:finetune,quick", "configs/mini_xception.py:transfer4"} <= set(configs)
  assert len(configs) >= 38


def test_every_config_passes_and_has_only_declared_fields(configs):
  declared = config_loading.declared_fields()
  for spec, config in configs.items():
    config_loading.check_values(config)  # load_config did too; here as the claim under test
    undeclared = set(config_loading.leaves(config)) - set(declared)
    assert not undeclared, f"{spec}: {sorted(undeclared)}"


def test_every_declaration_is_a_field_of_some_config(configs):
  # A rule for a field that no config has (as optim.name was once) cannot survive.
  used = set().union(*(config_loading.leaves(c) for c in configs.values()))
  assert set(config_loading.declared_fields()) - used == set()


def test_every_field_has_a_description_and_a_default_of_its_type(configs):
  declared = config_loading.declared_fields()
  for field, decl in declared.items():
    assert decl.doc.strip(), field
    assert decl.problem(decl.default) is None, field
  for config in configs.values():
    for field, value in config_loading.leaves(config).items():
      assert isinstance(value, type(declared[field].default)), field


def test_a_bad_value_and_an_undeclared_field_are_named_one_per_line():
  # As from a config.json: tuples are lists (valid), and no ConfigDict type kept the float out.
  d = json.loads(json.dumps(common.base_config("x").to_dict()))
  d["name"] = "my-run"  # trains, but its run could not be reloaded by its name
  d["loss"]["name"] = "x"
  d["train"]["batch_size"] = 0
  d["train"]["seed"] = 1.5
  d["model"]["typo"] = 3
  with pytest.raises(config_loading.ConfigError) as e:
    config_loading.check_values(ml_collections.ConfigDict(d))
  assert str(e.value).splitlines() == [
    "config.name=my-run: must be a Python identifier",
    "config.loss.name=x: must be one of cross_entropy | focal",
    "config.train.batch_size=0: must be >= 1",
    "config.train.seed=1.5: must be an int",
    "config.model.typo=3: not a declared field (declare it in configs/common.py)",
  ]


def test_fields_of_some_models_only_are_checked_whatever_was_imported():
  # In a fresh interpreter that never imported configs/transfer_common.py or
  # configs/mini_xception.py, their fields are still checked.
  code = (
    "import sys\n"
    "from fer_jax import config_loading\n"
    "from fer_jax.configs import common\n"
    "c = common.base_config('x')\n"
    "config_loading.add_fields(c.model, common.BACKBONE, common.MINI_XCEPTION)\n"
    "c.model.backbone_mode = 'thaw'\n"
    "c.model.head_classes = ('happy', 'happy')\n"
    "assert not [m for m in sys.modules if 'transfer_common' in m or 'mini_xception' in m]\n"
    "try:\n"
    "  config_loading.check_values(c)\n"
    "except config_loading.ConfigError as e:\n"
    "  print(e)\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout
  assert out.splitlines() == [
    "config.model.backbone_mode=thaw: must be one of freeze | finetune | train",
    "config.model.head_classes=('happy', 'happy'): must be distinct class names",
  ]


def test_choices_with_meanings_and_name_patterns():
  source = config_loading.declared_fields()["data.source"]
  assert source.problem("tfds:emnist") is None
  assert source.problem("tfds") == source.rule.text
  assert source.rule.text.startswith("one of auto | builtin")
  assert "auto: built-in faces" in source.rule.notes
  assert one_of(1, 3).test(3) and not one_of(1, 3).test(2)


def test_a_nested_table_is_a_nested_section_checked_like_any_other():
  # As a section whose entries have settings of their own (an evaluator's, say) would be.
  table = {
    "top": Field(1, "one", at_least(0)),
    "inner": {"rate": Field(0.5, "a rate", at_least(0))},
  }
  config = config_loading.section(table)
  assert config.to_dict() == {"top": 1, "inner": {"rate": 0.5}}
  assert set(config_loading.declarations({"s": table})) == {"s.top", "s.inner.rate"}
  assert config_loading.leaves(config) == {"top": 1, "inner.rate": 0.5}


def test_a_field_declared_twice_is_an_error():
  with pytest.raises(ValueError, match="config field model.x is declared twice"):
    config_loading.declarations(
      {"model": ({"x": Field(1, "one")}, {"x": Field(2, "two", at_least(0))})}
    )


def test_the_field_docs_match_the_declarations():
  with open(os.path.join(ROOT, "docs", "config_fields.md")) as f:
    assert f.read() == config_loading.fields_markdown(), (
      "docs/config_fields.md is stale: "
      "python -m fer_jax.config_loading --fields > docs/config_fields.md"
    )
  proc = subprocess.run(
    [sys.executable, "-m", "fer_jax.config_loading", "--fields"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  )
  assert proc.stdout == config_loading.fields_markdown()


def test_the_study_sweep_loads():
  for arg in ("quick", None):
    for entry in config_loading.import_file(
      os.path.join(ROOT, "configs/study.py"), "get_sweep"
    ).get_sweep(arg):
      spec = entry["config"] + (f":{entry['variant']}" if entry.get("variant") else "")
      config_loading.load_config(os.path.join(ROOT, spec))
