import pytest

from service.settings import Settings, SettingsError, torch_threads_for


def test_defaults_without_environment():
    settings = Settings.from_env(environ={})
    assert (settings.host, settings.port, settings.checkpoints) == (
        "127.0.0.1",
        8000,
        "checkpoints",
    )
    assert (settings.device, settings.max_new_tokens) == ("auto", 1024)


def test_every_field_comes_from_its_environment_variable():
    environ = {
        "TINYGPT_HOST": "0.0.0.0",
        "TINYGPT_PORT": "9001",
        "TINYGPT_CHECKPOINTS": "/models",
        "TINYGPT_DEVICE": "cpu",
        "TINYGPT_MAX_NEW_TOKENS": "64",
        "TINYGPT_MAX_PROMPT_CHARS": "100",
        "TINYGPT_WORKER_THREADS": "2",
        "TINYGPT_LOG_LEVEL": "debug",
    }
    assert Settings.from_env(environ=environ) == Settings(
        host="0.0.0.0", port=9001, checkpoints="/models", device="cpu", max_new_tokens=64,
        max_prompt_chars=100, worker_threads=2, log_level="debug",
    )  # fmt: skip


def test_overrides_beat_the_environment():
    settings = Settings.from_env({"port": 7000}, environ={"TINYGPT_PORT": "9001"})
    assert settings.port == 7000


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TINYGPT_PORT", "eighty"), ("TINYGPT_PORT", "70000"), ("TINYGPT_DEVICE", "tpu"),
     ("TINYGPT_MAX_NEW_TOKENS", "0")],
)  # fmt: skip
def test_a_bad_value_names_its_variable(variable, value):
    with pytest.raises(SettingsError, match=variable) as caught:
        Settings.from_env(environ={variable: value})
    assert repr(value) in str(caught.value)


def test_torch_threads_leave_a_core_to_the_event_loop(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(2)))
    assert torch_threads_for(Settings()) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(32)))
    assert torch_threads_for(Settings()) == 8
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0})
    assert torch_threads_for(Settings()) == 1
    assert torch_threads_for(Settings(torch_threads=3)) == 3
