"""The one tuning configuration: one set of defaults, spec round trips, CLI options from it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from pydantic import ValidationError

from tunelens.cli import app
from tunelens.errors import TunelensInputError
from tunelens.experiments.audit.spec import AuditSpec
from tunelens.experiments.convergence.spec import ConvergenceSpec
from tunelens.experiments.decide.cli import TUNING_NAMES
from tunelens.experiments.decide.config import DecideConfig, make_config
from tunelens.models.tuning import TuningConfig
from tunelens.options.tuning_options import NOT_OPTIONS, option_names, parse_tuning_options
from tunelens.spec import TuningSpec, default_spec, validate_spec

COMMANDS = {"convergence": {}, "audit": {}, "decide": TUNING_NAMES}
SEED_OPTION = {"convergence": "--seeds", "audit": "--seeds", "decide": "--seed"}


def click_command(name: str):
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def test_the_spec_tuning_section_is_the_library_config():
    assert TuningSpec is TuningConfig
    for section in (ConvergenceSpec, AuditSpec, DecideConfig):
        assert isinstance(section.model_fields["tuning"].default, TuningConfig)
    assert ConvergenceSpec().tuning == TuningConfig()
    assert DecideConfig().tuning == TuningConfig()


def test_only_the_audit_changes_defaults_and_only_the_documented_three():
    audit = AuditSpec().tuning
    changed = {
        k for k in TuningConfig.model_fields if getattr(audit, k) != getattr(TuningConfig(), k)
    }
    assert changed == {"learning_rate", "epochs", "batch_size"}
    assert (audit.learning_rate, audit.epochs, audit.batch_size) == (3e-3, 2, 16)


def test_every_field_has_a_description():
    for name, info in TuningConfig.model_fields.items():
        assert info.description, name


def test_todays_spec_keys_keep_their_meaning():
    tuning = TuningSpec(
        method="full",
        lora_r=4,
        lora_alpha=8,
        target_modules=None,
        learning_rate=5e-5,
        epochs=2,
        batch_size=16,
        max_steps=3,
    )
    assert tuning.target_modules == ["q_proj", "v_proj"]  # null: the default projections
    assert (tuning.method, tuning.lora_r, tuning.lora_alpha, tuning.max_steps) == ("full", 4, 8, 3)


def test_a_spec_tuning_section_round_trips():
    section = {"method": "lora", "lora_r": 4, "lora_dropout": 0.1, "lr_schedule": "linear"}
    spec = validate_spec({"convergence": {"tuning": section}}, source="test").convergence
    assert spec is not None
    dumped = spec.tuning.model_dump()
    assert "seed" not in dumped
    again = validate_spec({"convergence": {"tuning": dumped}}, source="test").convergence
    assert again is not None and again.tuning == spec.tuning
    assert TuningConfig(**dumped) == spec.tuning
    full = default_spec().model_dump()
    assert validate_spec(full, source="test") == default_spec()


def test_the_seed_comes_from_the_study_not_the_spec():
    with pytest.raises(TunelensInputError, match="seed"):
        validate_spec({"audit": {"tuning": {"seed": 3}}}, source="test")
    with pytest.raises(TunelensInputError):
        make_config(tuning=TuningConfig().with_seed(3))
    seeded = TuningConfig(epochs=2).with_seed(7)
    assert seeded.seed == 7 and seeded.epochs == 2
    assert TuningConfig(**seeded.model_dump(), seed=7) == seeded


@pytest.mark.parametrize(
    "bad",
    [
        {"lora_r": -1},
        {"lora_r": 0},
        {"lora_alpha": 0},
        {"lora_dropout": 1.0},
        {"learning_rate": 0},
        {"epochs": 0},
        {"batch_size": 0},
        {"max_steps": 0},
        {"method": "prefix"},
        {"lr_schedule": "cosine"},
        {"target_modules": []},
        {"unknown_key": 1},
    ],
)
def test_invalid_values_are_rejected(bad):
    with pytest.raises(ValidationError):
        TuningConfig(**bad)
    with pytest.raises(TunelensInputError):
        validate_spec({"convergence": {"tuning": bad}}, source="test")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_tuning_field_is_an_option_of_each_command(command):
    params = {opt: p for p in click_command(command).params for opt in p.opts}
    for field, info in TuningConfig.model_fields.items():
        if field in NOT_OPTIONS:
            assert SEED_OPTION[command] in params  # the command's own seed(s)
            continue
        names = option_names(field, COMMANDS[command])
        for name in names:
            assert name in params, (command, field, name)
            assert params[name].help == info.description, (command, field)


@pytest.mark.parametrize(
    ("command", "names"),
    [
        ("convergence", ["--method", "--learning-rate", "--epochs"]),
        ("audit", ["--method", "--learning-rate", "--epochs"]),
        (
            "decide",
            ["--epochs", "--lr", "--batch-size", "--max-steps", "--tuning-method", "--lora-r"],
        ),
    ],
)
def test_existing_option_names_still_work(command, names):
    opts = {opt for p in click_command(command).params for opt in p.opts}
    assert set(names) <= opts


def test_options_apply_over_the_commands_defaults():
    audit = AuditSpec().tuning
    got = parse_tuning_options(
        {"epochs": 5, "max_grad_norm": "none", "target_modules": "q, k"}, audit
    )
    assert got.epochs == 5 and got.max_grad_norm is None and got.target_modules == ["q", "k"]
    assert got.learning_rate == audit.learning_rate and got.batch_size == audit.batch_size
    assert parse_tuning_options({"max_steps": "4"}, TuningConfig()).max_steps == 4
    assert parse_tuning_options({}, audit) == audit
    with pytest.raises(TunelensInputError, match="--lr"):
        parse_tuning_options({"learning_rate": -1.0}, TuningConfig(), {"learning_rate": ("--lr",)})
    with pytest.raises(TunelensInputError, match="--lora-r"):
        parse_tuning_options({"lora_r": -2}, TuningConfig())


def test_a_bad_option_is_an_input_error_on_the_command_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "tunelens", "audit", "--lora-r", "-1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "--lora-r" in run.stderr


def test_the_tuning_config_does_not_import_torch():
    code = "import sys, tunelens.spec, tunelens.models.tuning; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_a_partial_audit_tuning_section_keeps_the_audits_defaults():
    from tunelens.experiments.audit.spec import AuditSpec
    from tunelens.spec import validate_spec

    spec = validate_spec({"audit": {"tuning": {"epochs": 1}}}, source="spec.yaml")
    assert spec.audit is not None
    default = AuditSpec().tuning
    assert spec.audit.tuning.epochs == 1
    assert spec.audit.tuning.learning_rate == default.learning_rate != 1e-2
    assert spec.audit.tuning.batch_size == default.batch_size
