"""The load test of bench/load.py in a shorter form: 32 clients mixing generate, next-token and
neighbours for 15 s against a real server with the tiny models; `make load` runs the full one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import MAX_RSS_GROWTH, run_load, started_server, table
from tests.service.tiny_models import BIGRAM_ID, GPT_ID


@pytest.mark.slow
def test_load_has_no_errors_and_memory_stays_flat(checkpoint_folder: Path, tmp_path: Path):
    log = tmp_path / "server.log"
    with started_server(checkpoint_folder, log) as (url, pid):
        report = run_load(url, pid, clients=32, duration=15, warmup=3, models=[GPT_ID, BIGRAM_ID])
    print("\n" + table(report))
    assert report["errors"] == 0, report["error_examples"]
    assert all(e["requests"] > 0 for e in report["endpoints"].values())
    assert report["rss_growth"] < MAX_RSS_GROWTH, table(report)
