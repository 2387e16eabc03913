"""Config loading: base inheritance, overrides, interpolation, strict validation and instantiation."""

from pathlib import Path

import pytest
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from omegaconf import OmegaConf

from d3epth import config
from d3epth.config import ConfigError, instantiate, load_config
from tests.helpers import CONF, REPO

MODEL = {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val/abs_rel"}}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def configs() -> Path:
    """tests/conf/config/sub/run.yaml: base.yaml <- sub/mid.yaml <- sub/run.yaml, with a nested class node and an env
    interpolation."""
    return CONF / "config" / "sub" / "run.yaml"


def test_base_inheritance_merges_underneath_in_order(configs: Path) -> None:
    cfg = load_config(configs)
    assert cfg.trainer.max_steps == 20  # the file itself wins over its bases
    assert cfg.trainer.precision == "32-true"  # from mid.yaml
    assert cfg.trainer.log_every_n_steps == 5  # from base.yaml, two levels down
    assert cfg.seed_everything == 1
    assert "base" not in cfg
    assert cfg.run_name == "run"  # defaults to the file's stem


def test_overrides_apply_last_and_may_add_valid_keys(configs: Path) -> None:
    cfg = load_config(configs, ["trainer.max_steps=2", "model.init_args.patience=7", "trainer.gradient_clip_val=1.0"])
    assert cfg.trainer.max_steps == 2
    assert cfg.model.init_args.patience == 7
    assert cfg.trainer.gradient_clip_val == 1.0


def test_env_interpolation_with_default(configs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("D3EPTH_TEST_MONITOR", raising=False)
    assert load_config(configs).model.init_args.monitor == "val/abs_rel"
    monkeypatch.setenv("D3EPTH_TEST_MONITOR", "val/delta1")
    assert load_config(configs).model.init_args.monitor == "val/delta1"


def test_instantiate_builds_objects_from_class_nodes(configs: Path) -> None:
    cfg = load_config(configs)
    early = instantiate(cfg.model)
    assert isinstance(early, EarlyStopping)
    assert early.patience == 3 and early.monitor == "val/abs_rel"
    assert isinstance(instantiate(cfg.data), LearningRateMonitor)


class Holder:
    """A container whose arguments are objects, as a datamodule's datasets are."""

    def __init__(self, items: dict, first: object, values: list | None = None) -> None:
        self.items, self.first, self.values = items, first, values


def test_instantiate_builds_nested_class_nodes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "ALLOWED_PREFIXES", (*config.ALLOWED_PREFIXES, "tests.test_config."))
    lr_monitor = {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}
    node = OmegaConf.create(
        {
            "class_path": "tests.test_config.Holder",
            "init_args": {"items": {"a": MODEL, "b": 3}, "first": lr_monitor, "values": [lr_monitor, "x"]},
        }
    )
    built = instantiate(node)
    assert isinstance(built, Holder)
    assert isinstance(built.items["a"], EarlyStopping) and built.items["a"].monitor == "val/abs_rel"
    assert built.items["b"] == 3
    assert isinstance(built.first, LearningRateMonitor)
    assert isinstance(built.values[0], LearningRateMonitor) and built.values[1] == "x"


def test_misspelt_trainer_key_names_key_and_suggestion(configs: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(configs, ["trainer.max_stepz=2"])
    message = str(err.value)
    assert "'max_stepz'" in message and "'max_steps'" in message and "'trainer'" in message
    assert "command-line override" in message
    assert "\n" not in message


def test_misspelt_key_in_file_names_the_file(configs: Path, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", f"base: {configs}\nmodel:\n  init_args:\n    patiense: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    message = str(err.value)
    assert str(bad) in message and "'patiense'" in message and "'patience'" in message
    assert "model.init_args" in message


def test_unknown_top_level_key(configs: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'traner'.*did you mean 'trainer'"):
        load_config(configs, ["traner.max_steps=1"])


def test_unknown_key_in_nested_class_node(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "nested.yaml",
        """data:
  class_path: d3epth.cli.trainer.SaveResolvedConfig
  init_args:
    config:
      inner:
        class_path: lightning.pytorch.callbacks.LearningRateMonitor
        init_args: {logging_intervall: step}
""",
    )
    with pytest.raises(
        ConfigError, match=r"'logging_intervall'.*data.init_args.config.inner.init_args.*'logging_interval'"
    ):
        load_config(cfg)


def test_missing_required_argument(tmp_path: Path) -> None:
    cfg = write(tmp_path / "missing.yaml", "model:\n  class_path: lightning.pytorch.callbacks.EarlyStopping\n")
    with pytest.raises(ConfigError, match=r"'model'.*EarlyStopping.*missing required argument.*'monitor'"):
        load_config(cfg)


@pytest.mark.parametrize("class_path", ["os.system", "builtins.eval", "subprocess.Popen", "d3epthx.evil.Thing"])
def test_class_path_outside_allow_list_is_refused_before_import(tmp_path: Path, class_path: str) -> None:
    cfg = write(tmp_path / "evil.yaml", f"model:\n  class_path: {class_path}\n  init_args: {{}}\n")
    with pytest.raises(ConfigError, match=rf"class_path '{class_path}' is not allowed"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="not allowed"):
        instantiate({"class_path": class_path})


def test_class_path_typo_suggests_existing_class(tmp_path: Path) -> None:
    cfg = write(tmp_path / "typo.yaml", "model:\n  class_path: lightning.pytorch.callbacks.EarlyStoping\n")
    with pytest.raises(
        ConfigError, match=r"has no 'EarlyStoping'.*did you mean 'lightning.pytorch.callbacks.EarlyStopping'"
    ):
        load_config(cfg)


def test_reserved_trainer_argument_is_refused(configs: Path) -> None:
    with pytest.raises(ConfigError, match=r"'trainer\.logger' is set by tools/fit\.py"):
        load_config(configs, ["trainer.logger=false"])


def test_malformed_override_and_missing_file(configs: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(configs, ["trainer.max_steps"])
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_cyclic_base_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cyclic base"):
        load_config(tmp_path / "a.yaml")


def test_unparsable_yaml_names_the_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "broken.yaml", "trainer: [max_steps: 1\n")
    with pytest.raises(ConfigError, match=r"cannot parse .*broken.yaml"):
        load_config(bad)


def test_repository_configs_are_valid() -> None:
    """Every YAML under configs/ (except the base files, which are partial) loads and validates."""
    root = REPO / "configs"
    assert (root / "base.yaml").is_file()
    base = load_config(root / "base.yaml")
    assert base.trainer.use_distributed_sampler is False
    for path in sorted(root.rglob("*.yaml")):
        if path.name != "base.yaml":
            load_config(path)


def test_keys_passed_through_kwargs_to_the_base_class_are_validated(tmp_path: Path) -> None:
    """Tasks hand **kwargs to DepthTask: its arguments are accepted, misspellings of them are not."""
    node = "model:\n  class_path: d3epth.tasks.PixelRefinementTask\n  init_args:\n    student: {backbone: x}\n"
    good = write(tmp_path / "good.yaml", node + "    warmup_steps: 3\n    lr: 0.1\n")
    assert load_config(good).model.init_args.warmup_steps == 3
    bad = write(tmp_path / "bad.yaml", node + "    lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' in 'model.init_args'; did you mean 'lr'\?"):
        load_config(bad)


def test_the_tests_own_configs_are_valid() -> None:
    """Every YAML under tests/conf loads and validates (sample_tiny.yaml is an overlay, valid on a stage config)."""
    paths = sorted(p for p in CONF.rglob("*.yaml") if p.name != "sample_tiny.yaml")
    assert len(paths) >= 10
    for path in paths:
        load_config(path)
