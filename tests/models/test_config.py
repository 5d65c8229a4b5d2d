from dataclasses import asdict, fields

import pytest

from models.cli import build_parser, config_from_args
from models.config import MODEL_DEFAULTS, MODEL_KINDS, PER_MODEL, TrainConfig, TrainingError
from models.train import MODEL_CLASSES


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_config_built_directly_has_the_command_lines_defaults(kind):
    args = build_parser().parse_args(["train", kind, "--data", "d.txt", "--out", "o"])
    assert TrainConfig(model=kind, data="d.txt", out="o") == config_from_args(args)


def test_each_model_has_its_own_defaults():
    bigram = TrainConfig(model="bigram", data="d", out="o")
    gpt = TrainConfig(model="gpt", data="d", out="o")
    assert (bigram.learning_rate, bigram.laplace, bigram.block_size) == (0.1, 1.0, 256)
    assert (gpt.learning_rate, gpt.laplace, gpt.block_size) == (1e-3, 0.0, 64)
    assert asdict(bigram) | MODEL_DEFAULTS["bigram"] == asdict(bigram)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_per_model_setting_has_a_default_for_every_model(kind):
    per_model = {f.name for f in fields(TrainConfig) if f.default is PER_MODEL}
    assert set(MODEL_DEFAULTS[kind]) == per_model
    assert PER_MODEL not in asdict(TrainConfig(model=kind, data="d", out="o")).values()


def test_given_settings_win_over_the_models_defaults():
    cfg = TrainConfig(model="bigram", data="d", out="o", learning_rate=0.5, laplace=0.0)
    assert (cfg.learning_rate, cfg.laplace, cfg.max_steps) == (0.5, 0.0, 3000)


def test_every_model_with_defaults_can_be_trained():
    assert set(MODEL_KINDS) == set(MODEL_CLASSES)


def test_an_unknown_model_is_refused():
    with pytest.raises(TrainingError, match="unknown model 'lstm'; choose bigram or gpt"):
        TrainConfig(model="lstm", data="d", out="o")


def test_an_unknown_precision_is_refused():
    with pytest.raises(TrainingError, match="unknown precision 'fp16'; choose auto, fp32, bf16"):
        TrainConfig(model="gpt", data="d", out="o", precision="fp16")


def test_the_command_line_refuses_an_unknown_precision(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "gpt", "--data", "d", "--out", "o", "--precision", "x"])
    assert exit_info.value.code == 2
    assert "--precision: invalid choice: 'x'" in capsys.readouterr().err
