"""YAML configuration: loading with ``base:`` inheritance, ``key=value`` overrides, strict validation, instantiation.

A run is described by one YAML file::

    base: [../base.yaml]              # files merged underneath, in order (paths relative to this file)
    run_name: stage1                  # TensorBoard run folder: lightning_logs/<run_name>/version_<n>
    seed_everything: 2024
    model:                            # a class node: class_path + init_args (the constructor is the schema)
      class_path: d3epth.tasks.LatentDistillationTask
      init_args: {lr: 3.0e-5}
    data:
      class_path: d3epth.data.DepthDataModule
      init_args:
        train:
          hypersim:                   # class nodes nest: this one is built before the datamodule
            class_path: d3epth.data.HypersimDataset
            init_args: {root: "${oc.env:HYPERSIM_ROOT,sample_data/hypersim}"}
    trainer: {max_steps: 20000}       # keyword arguments of lightning.Trainer
    checkpoint: {monitor: val/abs_rel}  # lightning.pytorch.callbacks.ModelCheckpoint arguments of the *best* checkpoint
    last_checkpoint_every_n_steps: 100  # checkpoints/last.ckpt, also written on an exception or Ctrl-C
    logger: {save_dir: lightning_logs}  # keyword arguments of lightning.pytorch.loggers.TensorBoardLogger
    callbacks: []                     # extra class nodes (lightning.pytorch.callbacks.*, d3epth.*)

Everything is checked before anything is built: an unknown key anywhere (top level, ``trainer``, ``checkpoint``,
``logger`` or a class node's ``init_args``) fails with a :class:`ConfigError` naming the key, where it is, and the
closest valid key; so do a missing required constructor argument and a ``class_path`` outside
:data:`ALLOWED_PREFIXES` (a YAML file must not be able to run arbitrary code).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from d3epth.errors import ConfigError

#: Module prefixes a ``class_path`` may name. Anything else is refused before import.
ALLOWED_PREFIXES: tuple[str, ...] = (
    "d3epth.",
    "torch.optim.",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
)

#: Keys allowed at the top level of a run config (``base`` is consumed while loading).
TOP_LEVEL_KEYS: tuple[str, ...] = (
    "run_name",
    "seed_everything",
    "model",
    "data",
    "trainer",
    "checkpoint",
    "logger",
    "callbacks",
    "last_checkpoint_every_n_steps",
)

#: Top-level sections whose keys are keyword arguments of a fixed class, validated against its signature.
KWARG_SECTIONS: dict[str, str] = {
    "trainer": "lightning.Trainer",
    "checkpoint": "lightning.pytorch.callbacks.ModelCheckpoint",
    "logger": "lightning.pytorch.loggers.TensorBoardLogger",
}

#: Arguments the tools set themselves; a config may not set them through ``trainer``/``logger``.
RESERVED_KWARGS: dict[str, tuple[str, ...]] = {
    "trainer": ("logger", "callbacks", "default_root_dir", "enable_checkpointing"),
    "logger": ("version", "name"),
    "checkpoint": ("dirpath", "save_on_exception"),
}


def load_config(path: str | Path, overrides: Sequence[str] = (), validate: bool = True) -> DictConfig:
    """Load a run config: merge its ``base:`` files underneath, apply ``key=value`` overrides, validate.

    Args:
        path: YAML file. ``base:`` (a path or a list of paths, relative to this file) names files merged underneath
            in order, each of which may have its own ``base:``.
        overrides: dotted ``key=value`` strings (OmegaConf dotlist syntax), applied last, e.g. ``trainer.max_steps=2``.
        validate: check keys and class nodes against the constructor signatures (see :func:`validate_config`).

    Returns:
        The merged config. Interpolations such as ``${oc.env:HYPERSIM_ROOT,sample_data/hypersim}`` are kept and
        resolved when values are read.

    Raises:
        ConfigError: unreadable file, cyclic ``base:``, malformed override, or (with ``validate``) any invalid key.
    """
    path = Path(path)
    cfg = _load_with_bases(path, chain=())
    if "run_name" not in cfg:
        cfg.run_name = path.stem
    file_keys = _dotted_keys(cfg)
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. trainer.max_steps=2)")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot apply overrides {overrides}: {err}") from err
    assert isinstance(cfg, DictConfig)
    if validate:
        from_cli = set(_dotted_keys(cfg)) - set(file_keys)
        validate_config(cfg, source=str(path), cli_keys=from_cli)
    return cfg


def _load_with_bases(path: Path, chain: tuple[Path, ...]) -> DictConfig:
    """Read ``path`` and merge it on top of its ``base:`` files (depth first)."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"cyclic base: {cycle}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and OmegaConf errors: report the file either way
        raise ConfigError(f"cannot parse {path}: {' '.join(str(err).split())}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(cfg).__name__}")
    bases = cfg.pop("base", None)
    if bases is None:
        return cfg
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, ListConfig | list):
        raise ConfigError(f"{path}: 'base' must be a path or a list of paths, got {bases!r}")
    merged = OmegaConf.create({})
    for base in bases:
        merged = OmegaConf.merge(merged, _load_with_bases(path.parent / str(base), (*chain, resolved)))
    return OmegaConf.merge(merged, cfg)  # type: ignore[return-value]


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    """All dotted key paths of a config (leaves and inner nodes), without resolving interpolations."""
    keys = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = f"{prefix}{key}"
            keys.append(child)
            keys.extend(_dotted_keys(node._get_node(key), child + "."))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            keys.extend(_dotted_keys(node._get_node(i), f"{prefix}{i}."))
    return keys


def _unknown_key(key: str, where: str, valid: Iterable[str], source: str, cli_keys: set[str]) -> ConfigError:
    """Build the one-line error for an unknown key, with the closest valid key when there is one."""
    valid = sorted(valid)
    full = f"{where}.{key}" if where else key
    origin = "command-line override" if full in cli_keys else source
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"{origin}: unknown key '{key}' in '{where or '<top level>'}'{hint}")


def validate_config(cfg: DictConfig, source: str = "<config>", cli_keys: set[str] | None = None) -> None:
    """Check a run config without building anything.

    Checks top-level keys, the keyword sections (``trainer``, ``checkpoint``, ``logger``) against their classes'
    signatures, and every class node (``model``, ``data``, each of ``callbacks``, and class nodes nested in their
    ``init_args``) for an allowed, importable ``class_path``, known ``init_args`` keys and present required arguments.

    Args:
        cfg: the merged config.
        source: where it came from, for messages (the YAML path).
        cli_keys: dotted keys that came from command-line overrides, so messages can say so.

    Raises:
        ConfigError: naming the first problem found.
    """
    cli_keys = cli_keys or set()
    for key in cfg.keys():
        if key not in TOP_LEVEL_KEYS:
            raise _unknown_key(str(key), "", TOP_LEVEL_KEYS, source, cli_keys)
    for section, class_path in KWARG_SECTIONS.items():
        node = cfg.get(section)
        if node is None:
            continue
        if not isinstance(node, DictConfig):
            raise ConfigError(f"{source}: '{section}' must be a mapping of {class_path} arguments")
        params = {
            name: p
            for name, p in _signature_params(_import(class_path, section, check_prefix=False)).items()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        }
        for key in node.keys():
            if key in RESERVED_KWARGS.get(section, ()):
                raise ConfigError(f"{source}: '{section}.{key}' is set by tools/fit.py and cannot be configured")
            if key not in params:
                raise _unknown_key(str(key), section, params, source, cli_keys)
    for section in ("model", "data"):
        if cfg.get(section) is not None:
            _validate_class_node(cfg[section], section, source, cli_keys)
    callbacks = cfg.get("callbacks")
    if callbacks is not None:
        if not isinstance(callbacks, ListConfig):
            raise ConfigError(f"{source}: 'callbacks' must be a list of class nodes")
        for i, node in enumerate(callbacks):
            _validate_class_node(node, f"callbacks.{i}", source, cli_keys)


def is_class_node(node: Any) -> bool:
    """Whether ``node`` is a ``{class_path, init_args}`` mapping."""
    return isinstance(node, DictConfig | dict) and "class_path" in node


def _validate_class_node(node: Any, where: str, source: str, cli_keys: set[str]) -> None:
    if not is_class_node(node):
        raise ConfigError(f"{source}: '{where}' must be a mapping with 'class_path' (and optional 'init_args')")
    for key in node.keys():
        if key not in ("class_path", "init_args"):
            raise _unknown_key(str(key), where, ("class_path", "init_args"), source, cli_keys)
    cls = _import(str(node.class_path), f"{where}.class_path", check_prefix=True)
    init_args = node.get("init_args") or {}
    if not isinstance(init_args, DictConfig | dict):
        raise ConfigError(f"{source}: '{where}.init_args' must be a mapping of {node.class_path} arguments")
    params = _signature_params(cls)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in init_args.keys():
        if key not in params and not accepts_any:
            raise _unknown_key(str(key), f"{where}.init_args", params, source, cli_keys)
    missing = [
        name
        for name, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and name not in init_args
    ]
    if missing:
        raise ConfigError(
            f"{source}: '{where}' ({node.class_path}) is missing required argument(s) "
            + ", ".join(f"'{m}'" for m in missing)
        )
    # Nested class nodes (e.g. datasets inside a datamodule), possibly inside dicts or lists.
    for key in init_args.keys():
        _validate_nested(
            init_args._get_node(key) if isinstance(init_args, DictConfig) else init_args[key],
            f"{where}.init_args.{key}",
            source,
            cli_keys,
        )


def _validate_nested(node: Any, where: str, source: str, cli_keys: set[str]) -> None:
    if is_class_node(node):
        _validate_class_node(node, where, source, cli_keys)
    elif isinstance(node, DictConfig):
        for key in node.keys():
            _validate_nested(node._get_node(key), f"{where}.{key}", source, cli_keys)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            _validate_nested(node._get_node(i), f"{where}.{i}", source, cli_keys)


def _signature_params(cls: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """Constructor parameters of ``cls`` (without ``self``).

    A constructor that takes ``**kwargs`` and hands them to its base class (``super().__init__(**kwargs)``, as the
    d3epth tasks do) accepts the base constructor's parameters too: they are collected along the MRO until a
    constructor without ``**kwargs``, so misspelt keys are still caught. ``**kwargs`` stays in the result only when
    the chain never closes (the class really accepts anything).
    """
    if not inspect.isclass(cls):
        targets = [cls]
    else:
        targets = [klass.__dict__["__init__"] for klass in cls.__mro__ if "__init__" in klass.__dict__]
    params: dict[str, inspect.Parameter] = {}
    open_kwargs: inspect.Parameter | None = None
    for target in targets:
        open_kwargs = None
        for name, p in inspect.signature(target).parameters.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                open_kwargs = p
            elif name != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL:
                params.setdefault(name, p)
        if open_kwargs is None or target is object.__init__:
            break
    if open_kwargs is not None:
        params[open_kwargs.name] = open_kwargs
    return params


def _import(class_path: str, where: str, check_prefix: bool) -> Any:
    """Import ``package.module.Name``, refusing paths outside :data:`ALLOWED_PREFIXES` when ``check_prefix``."""
    if check_prefix and not class_path.startswith(ALLOWED_PREFIXES):
        raise ConfigError(
            f"'{where}': class_path '{class_path}' is not allowed; it must start with one of "
            + ", ".join(ALLOWED_PREFIXES)
        )
    module_name, _, attr = class_path.rpartition(".")
    if not module_name:
        raise ConfigError(f"'{where}': class_path '{class_path}' must be a dotted path such as d3epth.data.X")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"'{where}': cannot import module '{module_name}' for '{class_path}': {err}") from err
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, public, n=1)
        hint = f"; did you mean '{module_name}.{close[0]}'?" if close else ""
        raise ConfigError(f"'{where}': module '{module_name}' has no '{attr}'{hint}")
    return getattr(module, attr)


def to_container(node: Any) -> Any:
    """Resolve interpolations and turn a config node into plain Python containers."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def instantiate(node: Any, **extra: Any) -> Any:
    """Build the object a class node describes, building nested class nodes first.

    Args:
        node: ``{class_path, init_args}`` (DictConfig or dict). Nested class nodes anywhere in ``init_args`` (also
            inside dicts and lists) are instantiated and passed as objects.
        **extra: keyword arguments added to (and overriding) ``init_args``, e.g. objects built by the caller.

    Returns:
        The constructed object.
    """
    node = to_container(node)
    if not is_class_node(node):
        raise ConfigError(f"expected a class node with 'class_path', got {node!r}")
    cls = _import(node["class_path"], "class_path", check_prefix=True)
    kwargs = {key: _build(value) for key, value in (node.get("init_args") or {}).items()}
    kwargs.update(extra)
    return cls(**kwargs)


def _build(value: Any) -> Any:
    if is_class_node(value):
        return instantiate(value)
    if isinstance(value, dict):
        return {key: _build(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_build(v) for v in value]
    return value
