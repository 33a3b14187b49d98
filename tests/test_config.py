from dataclasses import dataclass
from pathlib import Path

import pytest

from gimefive.config import load_config, save_config
from gimefive.errors import GimefiveError


@dataclass
class Demo:
    lr: float = 1e-3
    epochs: int = 10
    name: str = "x"
    amp: bool = True


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.01\nepochs: 3\n")
    cfg = load_config(Demo, path, epochs=5, name=None)
    assert (cfg.lr, cfg.epochs, cfg.name) == (0.01, 5, "x")
    again = load_config(Demo, save_config(cfg, tmp_path / "out.yaml"))
    assert again == cfg


@pytest.mark.parametrize("text, message", [
    ("lr: 0.1\nepoch: 3\n", "unknown key"),
    ("epochs: 2.5\n", "expected int"),
    ("amp: 3\n", "true/false"),
    ("- a\n- b\n", "mapping"),
])
def test_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(GimefiveError, match=message):
        load_config(Demo, path)


def test_missing_config_file(tmp_path):
    with pytest.raises(GimefiveError, match="not found"):
        load_config(Demo, tmp_path / "nope.yaml")


def test_default_configs_are_package_resources():
    """The defaults are read through importlib.resources, so a wheel install finds them
    inside the package, not in a checkout's configs/ folder."""
    from importlib import resources

    from gimefive.export.run import DEFAULT_CONFIG as export_default
    from gimefive.pipeline.config import DEFAULT_CONFIG as annotate_default
    from gimefive.pipeline.live_monitor import DEFAULT_MONITOR_CONFIG
    from gimefive.train.config import DEFAULT_CONFIG as train_default

    from gimefive.config import shipped_config

    shipped = resources.files("gimefive.configs")
    for name in ("annotate.yaml", "monitor.yaml", "export.yaml", "train_default.yaml"):
        path = shipped_config(name)
        assert path == Path(str(shipped / name)) and path.is_file()
    assert annotate_default == shipped_config("annotate.yaml")
    assert DEFAULT_MONITOR_CONFIG == shipped_config("monitor.yaml")
    assert export_default == shipped_config("export.yaml")
    assert train_default == shipped_config("train_default.yaml")
