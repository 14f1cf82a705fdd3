"""`livegen bench ray --quick`: the proxy rows, the replica rows and the drain, with their arithmetic."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from livegen.bench.scaleout import PLAIN, PROXIED
from livegen.cli import app

pytestmark = pytest.mark.timeout(600)


def test_quick_ray_bench_measures_the_proxy_replicas_and_a_drain(tmp_path):
    result = CliRunner().invoke(app, ["bench", "ray", "--quick", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "ray.json").read_text())
    assert [row["sessions"] for row in r["rows"]] == [1, 4]
    for row in r["rows"]:
        plain, proxied = row["latency"][PLAIN], row["latency"][PROXIED]
        assert row["added_p50_ms"] == pytest.approx(proxied["p50_ms"] - plain["p50_ms"], abs=0.01)
        ratio = row["p99_ratio"]
        assert ratio["low"] <= ratio["ratio"] <= ratio["high"]
        assert row["frames_per_s"][PLAIN] > 0 and row["frames_per_s"][PROXIED] > 0
    assert set(r["replicas_frames_per_s"]) == {"1", "2"}
    drain = r["drain"]
    assert 0 < drain["moved"] <= drain["sessions"] and len(drain["gaps_s"]) == drain["moved"]
    assert drain["max_s"] == max(drain["gaps_s"]) and drain["max_s"] < 60  # moved, not waited out
    assert "Drain:" in (tmp_path / "ray.md").read_text()
