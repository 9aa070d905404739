"""The plugin author's documentation agrees with the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

from mtoframe import scaffold_stateful
from mtoframe.method import Method

ROOT = Path(__file__).resolve().parents[1]
PLUGINS_MD = (ROOT / "docs" / "plugins.md").read_text()
README = (ROOT / "README.md").read_text()


def test_the_worked_stateful_example_is_what_the_scaffold_writes():
    [shown] = re.findall(r"<!-- stateful-example:start -->\n```python\n(.*?)```\n<!-- stateful-example:end -->",
                         PLUGINS_MD, re.S)
    assert shown == scaffold_stateful.METHOD.replace("@NAME@", "emanorm").replace("@CLASS@", "Emanorm")


def test_the_attribute_table_lists_every_class_attribute_of_method():
    declared = [n for n, ann in Method.__annotations__.items() if "ClassVar" in str(ann)]
    assert {"defaults_reproduce", "ignores_loss_weights"} <= set(declared)
    table = PLUGINS_MD.split("## What a method declares", 1)[1].split("\n## ", 1)[0]
    missing = [n for n in declared if f"`{n}`" not in table]
    assert not missing, f"docs/plugins.md's attribute table omits {missing}"


def test_readme_and_example_config_agree_on_its_run_time():
    config = (ROOT / "examples" / "scenes-famo-pcgrad.toml").read_text()
    [in_config] = re.findall(r"About (\d+ (?:seconds|minutes?))", config)
    [in_readme] = re.findall(r"scenes-famo-pcgrad\.toml`, about (\d+ (?:seconds|minutes?))", README)
    assert in_config == in_readme


def test_readme_shows_resuming_and_the_data_cache():
    assert "trainer.load_checkpoint(" in README and "trainer.save_checkpoint(" in README
    assert "$MTOFRAME_CACHE" in README and "~/.cache/mtoframe" in README
