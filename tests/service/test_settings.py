import pytest

from service.settings import Settings, SettingsError, replica_name, torch_threads_for


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


def test_workers_share_the_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)))
    assert [torch_threads_for(Settings(workers=n)) for n in (1, 2, 4, 8, 16)] == [8, 7, 3, 1, 1]
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(2)))
    assert torch_threads_for(Settings(workers=2)) == 1
    assert torch_threads_for(Settings(workers=2, torch_threads=2)) == 2


def test_replica_names_tell_processes_apart(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "box")
    monkeypatch.setattr("os.getpid", lambda: 41)
    assert replica_name(Settings()) == "box-41"
    assert replica_name(Settings(replica_id="api-1")) == "api-1"
    assert replica_name(Settings(replica_id="api-1", workers=2)) == "api-1-41"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TINYGPT_REDIS_URL", "localhost:6379"), ("TINYGPT_WORKERS", "0"),
     ("TINYGPT_REPLICA_ID", "a b"), ("TINYGPT_DRAIN_DELAY", "-1")],
)  # fmt: skip
def test_bad_scale_settings_name_their_variable(variable, value):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(environ={variable: value})
