"""Entry-point discovery: broken and incompatible plugins are reported while the others load."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

import pytest

import mtoframe
from mtoframe.commands import plugins as plugins_command
from mtoframe.registry import get_registry

GOOD = '''
import mtoframe
from mtoframe import Method, Role

MTOFRAME_HOOK_API = ">=1,<2"


class Fixture(Method):
    """Loss method fixture."""

    name = "goodfixture"
    summary = "a fixture method"
    paper = "none"
    roles = Role.LOSS

    @mtoframe.hookimpl
    def on_task_losses(self, ctx):
        ctx.weights = ctx.weights * 2


@mtoframe.hookimpl
def mtoframe_register(registry):
    registry.add(Fixture)
'''

BROKEN = "raise RuntimeError('boom at import')\n"

OLD_API = '''
import mtoframe
from mtoframe import Method

MTOFRAME_HOOK_API = ">=0.1,<1"


class Old(Method):
    name = "oldfixture"
    summary = "never loaded"
    paper = "none"


@mtoframe.hookimpl
def mtoframe_register(registry):
    registry.add(Old)
'''

CLASH = '''
import mtoframe
from mtoframe.builtin import EW


class Other(EW):
    pass


@mtoframe.hookimpl
def mtoframe_register(registry):
    registry.add(Other)   # 'ew' again: must be refused, the core's EW kept
'''


def _dist(root, dist, module, source):
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    ep_name = module.removesuffix("_plugin")
    (info / "entry_points.txt").write_text(f"[mtoframe]\n{ep_name} = {module}\n")


@pytest.fixture
def fixture_plugins(tmp_path, monkeypatch):
    _dist(tmp_path, "fixture-good", "good_plugin", GOOD)
    _dist(tmp_path, "fixture-broken", "broken_plugin", BROKEN)
    _dist(tmp_path, "fixture-oldapi", "oldapi_plugin", OLD_API)
    _dist(tmp_path, "fixture-clash", "clash_plugin", CLASH)
    for var in ("MTOFRAME_PLUGINS", "MTOFRAME_DISABLE_PLUGINS", "MTOFRAME_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield get_registry(reload=True)
    for mod in ("good_plugin", "broken_plugin", "oldapi_plugin", "clash_plugin"):
        sys.modules.pop(mod, None)
    monkeypatch.undo()
    get_registry(reload=True)


def _failures(reg):
    return {f.plugin: f for f in reg.failures}


def test_broken_and_incompatible_plugins_are_reported_others_load(fixture_plugins):
    reg = fixture_plugins
    fails = _failures(reg)
    assert "RuntimeError: boom at import" in fails["broken"].error
    assert fails["broken"].distribution == "fixture-broken"
    assert "incompatible hook API" in fails["oldapi"].error and mtoframe.HOOK_API_VERSION in fails["oldapi"].error
    assert "clashes" in fails["clash"].error
    assert "goodfixture" in reg.names() and "oldfixture" not in reg.names()
    assert reg.get("ew").distribution == "mtoframe"  # the clashing plugin did not replace it
    info = reg.get("goodfixture")
    assert (info.distribution, info.version, info.hooks) == ("fixture-good", "0.1", ["on_task_losses"])
    assert mtoframe.create("goodfixture").name == "goodfixture"


def test_unknown_name_lists_installed_and_failed(fixture_plugins):
    with pytest.raises(mtoframe.UnknownMethodError, match=r"goodfixture.*failed to load: .*broken"):
        mtoframe.create("nosuchmethod")


def test_plugins_command_lists_failures(fixture_plugins, capsys):
    assert plugins_command.run(argparse.Namespace(json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    by_plugin = {f["plugin"]: f["error"] for f in out["failures"]}
    assert set(by_plugin) >= {"broken", "oldapi", "clash"}
    assert any(m["name"] == "goodfixture" and m["distribution"] == "fixture-good" for m in out["methods"])
    assert plugins_command.run(argparse.Namespace(json=False)) == 0
    text = capsys.readouterr().out
    assert "FAILED broken (fixture-broken 0.1): RuntimeError: boom at import" in text
    assert "FAILED oldapi" in text and "incompatible hook API" in text


@pytest.mark.parametrize(
    ("var", "value", "loaded", "failed"),
    [
        ("MTOFRAME_PLUGINS", "good", {"goodfixture"}, set()),            # allow by entry-point name
        ("MTOFRAME_PLUGINS", "fixture-broken", set(), {"broken"}),        # allow by distribution name
        ("MTOFRAME_DISABLE_PLUGINS", "broken,fixture-oldapi,clash", {"goodfixture"}, set()),
        ("MTOFRAME_DISABLE_PLUGIN_AUTOLOAD", "1", set(), set()),
    ],
)
def test_allow_and_block_lists(fixture_plugins, monkeypatch, var, value, loaded, failed):
    monkeypatch.setenv(var, value)
    reg = get_registry(reload=True)
    fixture_methods = {"goodfixture", "oldfixture"}
    assert set(reg.names()) & fixture_methods == loaded
    assert set(_failures(reg)) & {"broken", "oldapi", "clash"} == failed
    assert "ew" in reg.names()
