"""Starting the server: refusing to start without a model, and the `uvicorn --factory` route."""

import re
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from tests.integration.conftest import (
    REPO,
    STARTUP_SECONDS,
    Server,
    free_port,
    running_server,
    serve_command,
    server_environment,
    stop,
    wait_until_ready,
)
from tests.service.tiny_models import BIGRAM_ID, GPT_ID


def test_refuses_to_start_when_no_checkpoint_loads(server, tmp_path):
    shutil.copytree(server.checkpoints / "broken", tmp_path / "broken")
    result = subprocess.run(
        serve_command(free_port(), "--checkpoints", str(tmp_path), "--device", "cpu"),
        capture_output=True, text=True, cwd=REPO, env=server_environment(),
        timeout=STARTUP_SECONDS,
    )  # fmt: skip
    assert result.returncode == 3  # uvicorn's status for a failed startup
    output = result.stdout + result.stderr
    assert "skipping checkpoint" in output and "does not match the sha256" in output
    assert "could be loaded" in output and "Application startup failed" in output


def test_refuses_a_checkpoint_folder_that_does_not_exist(tmp_path):
    result = subprocess.run(
        serve_command(free_port(), "--checkpoints", str(tmp_path / "none")),
        capture_output=True, text=True, cwd=REPO, env=server_environment(),
        timeout=STARTUP_SECONDS,
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_uvicorn_factory_reads_every_setting_from_the_environment(checkpoint_folder, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copytree(checkpoint_folder / BIGRAM_ID, folder / BIGRAM_ID)
    port = free_port()
    env = server_environment(
        TINYGPT_CHECKPOINTS=str(folder), TINYGPT_DEVICE="cpu", TINYGPT_MAX_NEW_TOKENS="8"
    )
    command = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
               "--port", str(port)]  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", folder, tmp_path / "server.log")
    with server.log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        try:
            wait_until_ready(process, server)
            models = httpx.get(f"{server.url}/v1/models").json()
            assert [model["id"] for model in models["data"]] == [BIGRAM_ID]
            assert models["limits"]["max_new_tokens"] == 8
            response = httpx.post(
                f"{server.url}/v1/generate", json={"model": BIGRAM_ID, "max_new_tokens": 9}
            )
            assert response.status_code == 400 and "cap of 8" in response.text
        finally:
            stop(process)


@pytest.mark.slow
def test_by_default_the_decode_step_compiles_after_start_up_and_ready_says_so(
    checkpoint_folder, tmp_path, monkeypatch
):
    """The default settings compile (this machine has g++): the server answers at once,
    /ready is 503 naming the model until its decode step is compiled, a request sent
    meanwhile waits and gets its text, and a restart finds the compiled code in the cache."""
    # inductor sets this in this process once anything compiled: the server must choose
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copytree(checkpoint_folder / GPT_ID, folder / GPT_ID)
    env = server_environment(TINYGPT_CHECKPOINTS=str(folder), TINYGPT_CACHE=str(tmp_path / "c"))
    port = free_port()
    server = Server(f"http://127.0.0.1:{port}", folder, tmp_path / "server.log")
    body = {"model": GPT_ID, "prompt": "the", "max_new_tokens": 20, "temperature": 0}
    with server.log_path.open("w") as log:
        process = subprocess.Popen(
            serve_command(port), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env
        )
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while time.monotonic() < deadline:
                try:
                    ready = httpx.get(f"{server.url}/ready", timeout=2)
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            assert ready.status_code == 503, server.log()
            assert f"compiling the decode step of {GPT_ID}" in ready.json()["error"]["message"]
            early = httpx.post(f"{server.url}/v1/generate", json=body, timeout=STARTUP_SECONDS)
            assert early.status_code == 200
            wait_until_ready(process, server)
        finally:
            stop(process)
    log_text = server.log()
    assert "decode step: compiled after start-up" in log_text
    assert re.search(r"decode step compiled in [\d.]+ s", log_text)
    # the compiled step's and prefill's packages, for the next start
    packages = sorted((tmp_path / "c" / "decode-steps").iterdir())
    assert [(p.name.split("-")[0], p.suffix) for p in packages] == [
        ("decode", ".pt2"),
        ("prefill", ".pt2"),
    ]
    with running_server(folder, tmp_path, TINYGPT_CACHE=str(tmp_path / "c")) as again:
        text = httpx.post(f"{again.url}/v1/generate", json=body, timeout=30).json()["text"]
        seconds = float(re.search(r"decode step compiled in ([\d.]+) s", again.log())[1])
    assert text == early.json()["text"]
    assert seconds < float(re.search(r"compiled in ([\d.]+) s", log_text)[1])
