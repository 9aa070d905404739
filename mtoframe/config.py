"""Run configuration for ``mtoframe train CONFIG.toml``: TOML read with :mod:`tomllib` into
frozen ``attrs`` classes whose validators name the key and the allowed values.

Example (every key optional except where the data set needs it)::

    seed = 0
    epochs = 10
    batch_size = 32
    methods = ["repmtl", { name = "nashmtl", options = { max_norm = 1.0 } }]
    tasks = ["segmentation", "depth", "normal"]   # a subset trains fewer heads (STL: one)
    log_dir = "runs/repmtl-nash"
    log_every = 50
    nonfinite = "raise"                            # or "skip"
    device = "cpu"
    checkpoint = "runs/repmtl-nash/last.pt"        # written after every epoch

    [data]
    name = "scenes"        # scenes | manytask | nyuv2 | cityscapes | office31 | officehome
    n_train = 2000
    n_val = 400
    size = 64

    [model]
    name = "auto"          # hps (scenes, nyuv2, cityscapes) | mlp (manytask) | resnet50 (nyuv2, cityscapes)
                           # | resnet18 (office31, officehome: images under path, lists under list_dir)
    width = 32

    [optimizer]
    name = "adam"          # adam | sgd
    lr = 1e-3
    weight_decay = 0.0

User code (the convention of LightningCLI's ``class_path`` / ``init_args`` and Hydra's
``_target_``, spelt ``factory`` / ``args``): a ``factory`` is a ``"package.module:function"``
path, imported when the run is built and called with the ``args`` table as keyword arguments::

    pythonpath = ["weather"]          # folders put first on sys.path, relative to this file

    [data]
    factory = "weather_mtl.data:make_datasets"   # returns (train, val) or (train, val, test)
    args = { n_train = 512, seed = 0 }            # each item: (input, {task: target})

    [model]
    factory = "weather_mtl.model:build"          # returns a mtoframe.MultiTaskModel
    args = { hidden = 32 }                        # with one head per [[tasks]] name

    [[tasks]]
    name = "temperature"
    loss = "mse"                                  # built-in: mse | l1 | smooth_l1 | cross_entropy | bce_logits
    metrics = ["mae"]                             # built-in: mae | mse | accuracy

    [[tasks]]
    name = "rain"
    loss = { factory = "weather_mtl.losses:FocalLoss", args = { gamma = 2.0 } }  # factory(**args) is the loss
    metrics = ["accuracy", { factory = "weather_mtl.metrics:Brier" }]

A loss given as a bare path (``loss = "mypkg.losses:huber"``) is the loss function itself
(``(prediction, target) -> scalar``); given as a table, ``factory(**args)`` builds it (a class such
as ``torch.nn:SmoothL1Loss`` goes in a table). A metric keeps state, so a bare metric path is
called without arguments and a table with its ``args``, once per run; either returns an object with
``directions``, ``reset``, ``update`` and ``compute`` (:class:`mtoframe.metrics.Metric`). With a
``[data] factory`` the ``[[tasks]]`` tables are required and ``[data] name`` is ignored; a
``[model] factory`` is required too (the built-in models fit only the built-in data). Failures
to import, missing functions, wrong arguments and wrong return types are errors naming the
factory (:mod:`mtoframe.factories`).

``--set key=value`` overrides one dotted key (``--set optimizer.lr=3e-4``); the value is read
as a TOML value, or as a string when it is not one (``--set data.name=manytask``).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs

from .errors import OptionError
from .factories import check_path
from .options import boolean, in_range, integer, one_of, owner_name

_C = TypeVar("_C", bound=attrs.AttrsInstance)

DATASETS = ("scenes", "manytask", "nyuv2", "cityscapes", "office31", "officehome")
MODELS = ("auto", "hps", "mlp", "resnet50", "resnet18")
DENSE_TASKS = ("segmentation", "depth", "normal")
LOSSES = ("mse", "l1", "smooth_l1", "cross_entropy", "bce_logits")
METRICS = ("mae", "mse", "accuracy")


def _optional_str(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise OptionError(f"option {attr.name!r} of {type(inst).__method_name__} must be a non-empty string, "
                          f"got {value!r}")


def _str_list(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, tuple) or not value or not all(isinstance(v, str) for v in value)):
        raise OptionError(f"option {attr.name!r} of {type(inst).__method_name__} must be a non-empty list of names "
                          f"(strings), got {value!r}")


def _tuple_or_none(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _factory_path(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        check_path(value, f"option {attr.name!r} of {type(inst).__method_name__}")


def _table(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise OptionError(f"option {attr.name!r} of {type(inst).__method_name__} must be a table of keyword "
                          f"arguments, got {value!r}")


@attrs.frozen(kw_only=True)
class FactorySpec:
    """``{ factory = "pkg.mod:make", args = {...} }``: ``make(**args)`` builds the object."""

    factory: str
    args: dict[str, Any] = attrs.field(factory=dict)


def _spec(value: Any, where: str, builtins: Sequence[str]) -> str | FactorySpec:
    """A built-in name, a bare ``module:function`` path, or a ``{factory, args}`` table."""
    if isinstance(value, str):
        if value in builtins:
            return value
        if ":" not in value:
            raise OptionError(f"{where} = {value!r} is neither a built-in ({', '.join(builtins)}) nor a "
                              "'package.module:function' path")
        return check_path(value, where)
    if isinstance(value, Mapping):
        extra = sorted(set(value) - {"factory", "args"})
        if extra or "factory" not in value:
            raise OptionError(f"{where} as a table needs 'factory' and optionally 'args' (allowed keys: factory, "
                              f"args); got {dict(value)!r}")
        args = value.get("args", {})
        if not isinstance(args, Mapping):
            raise OptionError(f"{where}.args must be a table of keyword arguments, got {args!r}")
        return FactorySpec(factory=check_path(value["factory"], f"{where}.factory"), args=dict(args))
    raise OptionError(f"{where} must be a built-in name ({', '.join(builtins)}), a 'package.module:function' "
                      f"path or a {{factory, args}} table, got {value!r}")


@attrs.frozen(kw_only=True)
class TaskSpec:
    """One ``[[tasks]]`` table: the head's name, its loss and its metrics."""

    name: str
    loss: str | FactorySpec
    metrics: tuple[str | FactorySpec, ...] = ()


def _task_spec(i: int, table: Mapping[str, Any]) -> TaskSpec:
    extra = sorted(set(table) - {"name", "loss", "metrics"})
    if extra or not isinstance(table.get("name"), str) or "loss" not in table:
        raise OptionError(f"tasks[{i}] needs a string 'name' and a 'loss', optionally 'metrics' (allowed keys: "
                          f"name, loss, metrics); got {dict(table)!r}")
    where = f"tasks[{i}] ({table['name']!r})"
    metrics = table.get("metrics", [])
    if not isinstance(metrics, list):
        raise OptionError(f"{where}.metrics must be a list, got {metrics!r}")
    return TaskSpec(name=table["name"], loss=_spec(table["loss"], f"{where}.loss", LOSSES),
                    metrics=tuple(_spec(m, f"{where}.metrics[{j}]", METRICS) for j, m in enumerate(metrics)))


def _tasks(value: Any) -> Any:
    """A list of names (a subset of a built-in data set's tasks) or of ``[[tasks]]`` tables."""
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        specs = tuple(_task_spec(i, v) for i, v in enumerate(value))
        names = [t.name for t in specs]
        if len(set(names)) != len(names):
            raise OptionError(f"[[tasks]] repeats a name: {names}")
        return specs
    if isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
        raise OptionError("'tasks' must be all names or all [[tasks]] tables, not a mix")
    return _tuple_or_none(value)


def _str_list_or_empty(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value != ():
        _str_list(inst, attr, value)


def _task_list(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, tuple) and value and all(isinstance(v, TaskSpec) for v in value):
        return
    _str_list(inst, attr, value)


@attrs.frozen(kw_only=True)
class DataConfig:
    __method_name__: ClassVar[str] = "[data]"  # the validators' messages say "option 'x' of <this>"
    name: str = attrs.field(default="scenes", validator=one_of(DATASETS))
    path: str | None = attrs.field(default=None, validator=_optional_str)
    # scenes
    n_train: int = attrs.field(default=2000, validator=integer(1))
    n_val: int = attrs.field(default=400, validator=integer(1))
    size: int = attrs.field(default=64, validator=integer(8, 4096))
    cache_dir: str | None = attrs.field(default=None, validator=_optional_str)
    # manytask
    num_tasks: int = attrs.field(default=8, validator=integer(2, 40))
    d_in: int = attrs.field(default=32, validator=integer(2))
    correlation: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0, hi_open=True))
    # cityscapes
    label_dir: str = attrs.field(default="label_7", validator=_optional_str)
    num_classes: int | None = attrs.field(default=None, validator=attrs.validators.optional(integer(2)))
    # office31 / officehome: {list_dir}/{domain}_{split}.txt, image paths relative to path
    list_dir: str | None = attrs.field(default=None, validator=_optional_str)
    domains: tuple[str, ...] | None = attrs.field(default=None, converter=_tuple_or_none, validator=_str_list)
    image_size: int = attrs.field(default=224, validator=integer(8, 4096))
    val_split: str = attrs.field(default="val", validator=_optional_str)
    workers: int = attrs.field(default=0, validator=integer(0, 64))
    # user code: factory(**args) -> (train, val[, test])
    factory: str | None = attrs.field(default=None, validator=_factory_path)
    args: dict[str, Any] = attrs.field(factory=dict, validator=_table)

    def __attrs_post_init__(self) -> None:
        if self.factory is not None:
            return
        if self.name in ("nyuv2", "cityscapes") and self.path is None:
            raise OptionError(f"[data] name = {self.name!r} needs path = the directory holding train/ and val/ "
                              "of the preprocessed .npy release")
        if self.name in ("office31", "officehome") and self.path is None:
            raise OptionError(f"[data] name = {self.name!r} needs path = the image root (and list_dir = the "
                              "directory of {domain}_{split}.txt lists when they live elsewhere)")


@attrs.frozen(kw_only=True)
class ModelConfig:
    __method_name__: ClassVar[str] = "[model]"  # the validators' messages say "option 'x' of <this>"
    name: str = attrs.field(default="auto", validator=one_of(MODELS))
    width: int = attrs.field(default=32, validator=integer(1, 1024))
    d_rep: int = attrs.field(default=64, validator=integer(1))
    # user code: factory(**args) -> MultiTaskModel
    factory: str | None = attrs.field(default=None, validator=_factory_path)
    args: dict[str, Any] = attrs.field(factory=dict, validator=_table)


@attrs.frozen(kw_only=True)
class OptimizerConfig:
    __method_name__: ClassVar[str] = "[optimizer]"  # the validators' messages say "option 'x' of <this>"
    name: str = attrs.field(default="adam", validator=one_of(("adam", "sgd")))
    lr: float = attrs.field(default=1e-3, validator=in_range(0.0, math.inf, lo_open=True, hi_open=True))
    weight_decay: float = attrs.field(default=0.0, validator=in_range(0.0, math.inf, hi_open=True))
    momentum: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0))


def _methods(value: Any) -> tuple[Any, ...]:
    if isinstance(value, tuple):  # already converted (attrs.evolve)
        return value
    if not isinstance(value, list):
        raise OptionError(f"'methods' must be a list of method names or {{name, options}} tables, got {value!r}")
    out: list[Any] = []
    for i, m in enumerate(value):
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, Mapping):
            extra = sorted(set(m) - {"name", "options"})
            if extra or not isinstance(m.get("name"), str):
                raise OptionError(f"methods[{i}] must have a string 'name' and optionally an 'options' table "
                                  f"(allowed keys: name, options); got {dict(m)!r}")
            opts = m.get("options", {})
            if not isinstance(opts, Mapping):
                raise OptionError(f"methods[{i}].options must be a table, got {opts!r}")
            out.append((m["name"], dict(opts)))
        else:
            raise OptionError(f"methods[{i}] must be a method name or a {{name, options}} table, got {m!r}")
    return tuple(out)


def _section(cls: type[_C], value: Any) -> _C:
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise OptionError(f"{owner_name(cls)} must be a table, got {value!r}")
    return build(cls, value)


# attrs converters must be named functions for type checkers to see their result type
def _data_section(value: Any) -> DataConfig:
    return _section(DataConfig, value)


def _model_section(value: Any) -> ModelConfig:
    return _section(ModelConfig, value)


def _optimizer_section(value: Any) -> OptimizerConfig:
    return _section(OptimizerConfig, value)


@attrs.frozen(kw_only=True)
class RunConfig:
    __method_name__: ClassVar[str] = "the run config"  # the validators' messages say "option 'x' of <this>"
    data: DataConfig = attrs.field(factory=DataConfig, converter=_data_section)
    model: ModelConfig = attrs.field(factory=ModelConfig, converter=_model_section)
    optimizer: OptimizerConfig = attrs.field(factory=OptimizerConfig, converter=_optimizer_section)
    methods: tuple[Any, ...] = attrs.field(default=(), converter=_methods)
    tasks: tuple[str, ...] | tuple[TaskSpec, ...] | None = attrs.field(default=None, converter=_tasks,
                                                                        validator=_task_list)
    pythonpath: tuple[str, ...] = attrs.field(default=(), converter=_tuple_or_none, validator=_str_list_or_empty)
    epochs: int = attrs.field(default=10, validator=integer(1))
    batch_size: int = attrs.field(default=32, validator=integer(1))
    seed: int = attrs.field(default=0, validator=integer(0))
    log_dir: str | None = attrs.field(default=None, validator=_optional_str)
    log_every: int = attrs.field(default=50, validator=integer(1))
    nonfinite: str = attrs.field(default="raise", validator=one_of(("raise", "skip")))
    device: str = attrs.field(default="cpu", validator=_optional_str)
    checkpoint: str | None = attrs.field(default=None, validator=_optional_str)
    progress: bool = attrs.field(default=False, validator=boolean())

    def task_names(self) -> tuple[str, ...] | None:
        """The names in ``tasks`` (``None`` when unset): a built-in data set's subset, or the
        names of the ``[[tasks]]`` tables."""
        if self.tasks is None:
            return None
        return tuple(t if isinstance(t, str) else t.name for t in self.tasks)

    def __attrs_post_init__(self) -> None:
        user_tasks = bool(self.tasks and isinstance(self.tasks[0], TaskSpec))
        if self.data.factory is not None:
            if not user_tasks:
                raise OptionError(f"[data] factory = {self.data.factory!r} needs [[tasks]] tables (name, loss, "
                                  "metrics), one per head of the model")
            if self.model.factory is None:
                raise OptionError("[data] factory needs a [model] factory too: the built-in models fit only "
                                  "the built-in data sets")
        elif self.model.factory is not None:
            raise OptionError("a [model] factory needs a [data] factory: the built-in data sets build their own "
                              "models (choose one with [model] name)")
        elif user_tasks:
            raise OptionError("[[tasks]] tables (with losses) need a [data] factory; with a built-in data set, "
                              "'tasks' is a list of its task names")


def build(cls: type[_C], table: Mapping[str, Any]) -> _C:
    """``cls(**table)``, rejecting unknown keys with the list of allowed ones."""
    allowed = [a.name for a in attrs.fields(cls)]
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise OptionError(f"unknown key(s) {unknown} in {owner_name(cls)}; allowed: {', '.join(allowed)}")
    return cls(**table)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optimizer.lr=3e-4"`` -> ``(["optimizer", "lr"], 0.0003)``."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise OptionError(f"--set expects key=value (e.g. optimizer.lr=3e-4), got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: take it as a string
    return key.strip().split("."), value


def apply_overrides(table: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = table
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise OptionError(f"--set {item!r}: {part!r} is not a table")
            node = child
        node[path[-1]] = value
    return table


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Read and validate ``path`` (TOML), applying ``--set`` overrides."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise OptionError(f"cannot read config {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise OptionError(f"config {p} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                          "TOML files must be UTF-8") from None
    return parse_config(text, overrides, source=str(p), base=p.parent)


def parse_config(text: str, overrides: Sequence[str] = (), *, source: str = "<config>",
                 base: str | os.PathLike[str] | None = None) -> RunConfig:
    """Validate TOML ``text``; relative ``pythonpath`` folders are taken from ``base`` (the
    config's folder; the working directory when ``None``) and stored absolute."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)  # "(at line L, column C)", or "(at end of document)": name that line too
        if "line" not in msg:
            msg += f" (line {max(len(text.splitlines()), 1)} is the last)"
        raise OptionError(f"{source} is not valid TOML: {msg}") from exc
    table = apply_overrides(table, overrides)
    if isinstance(table.get("pythonpath"), list):
        root = Path(base) if base is not None else Path.cwd()
        table["pythonpath"] = [str((root / f).resolve()) if isinstance(f, str) else f for f in table["pythonpath"]]
    return build(RunConfig, table)


def flat(cfg: RunConfig) -> dict[str, Any]:
    """The config as ``{dotted.key: value}`` (for TensorBoard hyper-parameters)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        for a in attrs.fields(type(obj)):
            v = getattr(obj, a.name)
            if attrs.has(type(v)):
                walk(f"{prefix}{a.name}.", v)
            else:
                out[f"{prefix}{a.name}"] = v if isinstance(v, (int, float, str, bool)) else repr(v)
    walk("", cfg)
    # Keys of configs without user code stay as they were before factories existed, so a
    # checkpoint written then still resumes (a resume refuses any key that differs).
    for section in ("data", "model"):
        if getattr(cfg, section).factory is None:
            del out[f"{section}.factory"], out[f"{section}.args"]
    if not cfg.pythonpath:
        del out["pythonpath"]
    return out
