"""One source of truth per setting: the config dataclasses are the schema.

Each field carries its help, range and choices once; validation, the command-line options
(with their shown defaults) and the shipped YAML files are derived from it. These tests
keep the derived places from drifting apart again.
"""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner
from gimefive.export.run import ExportConfig
from gimefive.pipeline.config import AnnotateConfig
from gimefive.pipeline.live_monitor import MonitorConfig
from gimefive.pipeline.live_source import LiveOptions
from gimefive.train.config import TrainConfig

from gimefive.config import (
    DEFAULT_FILES,
    check_settings,
    load_config,
    render_defaults,
    shipped_config,
)
from gimefive.errors import GimefiveError

SCHEMAS = [AnnotateConfig, MonitorConfig, ExportConfig, LiveOptions, TrainConfig]


@pytest.mark.parametrize("cls", SCHEMAS, ids=lambda c: c.__name__)
def test_every_field_documents_itself(cls):
    undocumented = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
    assert not undocumented


@pytest.mark.parametrize("name", sorted(DEFAULT_FILES))
def test_shipped_yaml_is_generated_from_the_dataclass(name):
    """Every key of the shipped file is a field, its value is the field's default and its
    help is the comment above it; regenerate with ``python -m gimefive.config
    --write-defaults`` after changing a dataclass."""
    cls = DEFAULT_FILES[name]()
    text = shipped_config(name).read_text()
    assert text == render_defaults(cls), f"configs/{name} is stale: python -m " \
                                         "gimefive.config --write-defaults"
    for f in dataclasses.fields(cls):
        assert f"# {f.metadata['help'].split()[0]}" in text


def test_monitor_config_is_one_camera_options_type():
    """The camera settings are LiveOptions' own fields, not a second copy of them."""
    assert issubclass(MonitorConfig, LiveOptions)
    shared = {f.name for f in dataclasses.fields(LiveOptions)}
    cfg = MonitorConfig(max_reconnects=3, stall_timeout_s=2.0)
    assert set(cfg.live_options()) == shared
    assert LiveOptions(**cfg.live_options()).max_reconnects == 3


def test_never_give_up_is_spelled_one_way():
    assert MonitorConfig().max_reconnects == LiveOptions().max_reconnects == -1
    assert MonitorConfig().live_options()["max_reconnects"] == -1
    with pytest.raises(GimefiveError, match="max_reconnects"):
        LiveOptions(max_reconnects=-2)


def test_runtime_facts_are_not_user_settings():
    names = {f.name for f in dataclasses.fields(AnnotateConfig)} | \
        {f.name for f in dataclasses.fields(MonitorConfig)}
    assert not names & {"hwm", "streams"}


@pytest.mark.parametrize("cls, bad, message", [
    (AnnotateConfig, dict(cam_opacity=1.5), "config key 'cam_opacity': expected in [0, 1]"),
    (AnnotateConfig, dict(align="left"), "expected one of eyes, landmarks, none"),
    (AnnotateConfig, dict(detect_every=0), "config key 'detect_every': expected >= 1"),
    (AnnotateConfig, dict(smoothing_alpha=0.0), "expected in (0, 1]"),
    (MonitorConfig, dict(transport="http"), "monitor config 'transport'"),
    (ExportConfig, dict(cam_layer="conv3"), "cam_layer"),
    (TrainConfig, dict(schedule="step"),
     "train config 'schedule': expected one of constant, cosine, onecycle"),
    (TrainConfig, dict(val_fraction=1.0), "train config 'val_fraction': expected in [0, 1)"),
    (TrainConfig, dict(epochs=0), "train config 'epochs': expected >= 1"),
])
def test_validation_comes_from_the_metadata(cls, bad, message):
    with pytest.raises(GimefiveError) as info:
        cls(**bad)
    assert message in str(info.value)


def test_check_settings_skips_none():
    check_settings(AnnotateConfig(weights=None, uncertain_threshold=None))


@pytest.mark.parametrize("command, shown", [
    ("annotate", {"--detect-every": "[default: 1]", "--cam-every": "[default: 1]",
                  "--cam-opacity": "[default: 0.45]", "--align": "[default: eyes]",
                  "--detect-size": "[default: 640]", "--backend": "[default: auto]"}),
    ("monitor", {"--transport": "[default: tcp]", "--stall-timeout": "[default: 5.0]",
                 "--max-reconnects": "[default: -1]", "--status-every": "[default: 10.0]",
                 "--segment": "[default: 10.0]", "--detect-every": "[default: 1]"}),
    ("export", {"--format": "[default: onnx]", "--precision": "[default: fp32]",
                "--cam-layer": "[default: conv5]"}),
    ("train", {"--epochs": "[default: 30]", "--batch-size": "[default: 64]",
               "--lr": "[default: 0.001]", "--precision": "[default: auto]"}),
])
def test_help_shows_the_dataclass_defaults(command, shown):
    from gimefive.cli import cli

    text = " ".join(CliRunner().invoke(cli, [command, "--help"],
                                       terminal_width=10_000).output.split())
    options = text[text.index("Options:"):]
    for flag, default in shown.items():
        after = options[options.index(flag + " "):]
        own = after[:after.index(" --", 2)]
        assert default in own and own.count("[default:") == 1, flag  # shown, not restated
    assert "[config:" not in text


@pytest.mark.parametrize("command, cls", [("annotate", AnnotateConfig),
                                          ("export", ExportConfig), ("train", TrainConfig)])
def test_options_named_after_fields_come_from_the_dataclass(command, cls):
    """An option that sets a config field shows that field's own help and default."""
    from gimefive.cli import cli

    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = cli.get_command(click.Context(cli), command).params
    offered = [p for p in params if p.name in fields]
    assert offered
    for param in offered:
        field = fields[param.name]
        assert (param.help, param.default) == (field.metadata["help"], field.default), \
            param.name


def test_cli_flags_override_only_what_was_given(tmp_path, monkeypatch):
    """A flag left at its shown default must not override the --config file."""
    import gimefive.pipeline.run as run
    import gimefive.pipeline.summary as summary

    seen = {}

    def fake_run(input_path, output, *, config, **kwargs):
        seen["config"] = config

    monkeypatch.setattr(run, "annotate_video", fake_run)
    monkeypatch.setattr(summary, "format_summary", lambda result: "")
    path = tmp_path / "mine.yaml"
    path.write_text("cam_every: 4\ncam_opacity: 0.2\n")
    from gimefive.cli import cli

    result = CliRunner().invoke(cli, ["annotate", "in.mp4", "--json", str(tmp_path / "o.jsonl"),
                                      "--config", str(path), "--cam-opacity", "0.3", "-q"])
    assert result.exit_code == 0, result.output
    assert (seen["config"].cam_every, seen["config"].cam_opacity) == (4, 0.3)


@pytest.mark.parametrize("args, message", [
    (["--detect-every", "0"], "Invalid value for '--detect-every': must be >= 1, got 0"),
    (["--cam-opacity", "2"], "Invalid value for '--cam-opacity': must be in [0, 1], got 2.0"),
])
def test_bad_flags_name_the_range(args, message):
    from gimefive.cli import cli

    result = CliRunner().invoke(cli, ["annotate", "x.mp4", "--json", "x.jsonl", *args])
    assert result.exit_code == 2 and message in result.output


def test_one_uncertain_threshold_reader(tmp_path):
    from gimefive.checkpoint import UNCERTAIN_THRESHOLD, save_weights, uncertain_threshold_of
    from gimefive.model import GiMeFive

    assert uncertain_threshold_of(tmp_path / "missing.safetensors") == UNCERTAIN_THRESHOLD
    path = save_weights(tmp_path / "w.safetensors", GiMeFive(), {"uncertain_threshold": 0.55})
    assert uncertain_threshold_of(path) == 0.55
    assert uncertain_threshold_of(None, {"uncertain_threshold": 0.3}) == 0.3
    assert uncertain_threshold_of(None, {"uncertain_threshold": "x"}) == UNCERTAIN_THRESHOLD


RECIPES = sorted(p.name for p in shipped_config("train_default.yaml").parent.glob("train_*"))


def test_train_default_is_the_generated_defaults():
    """`gimefive train` without --config runs the dataclass's defaults, documented."""
    assert DEFAULT_FILES["train_default.yaml"]() is TrainConfig
    assert load_config(TrainConfig, shipped_config("train_default.yaml")) == TrainConfig()


@pytest.mark.parametrize("name", RECIPES)
def test_every_train_recipe_is_a_valid_train_config(name):
    """The recipes hold TrainConfig keys only, each in its field's range, so a renamed
    field or a narrowed range fails here rather than at the start of a long run."""
    import yaml

    keys = set(yaml.safe_load(shipped_config(name).read_text()))
    assert keys <= {f.name for f in dataclasses.fields(TrainConfig)}, name
    config = load_config(TrainConfig, shipped_config(name))
    check_settings(config, "train config")
