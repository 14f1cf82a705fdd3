"""`livegen bench ray --quick`: the ingress rows (HAProxy and Serve's proxy), the replica rows, the drain and a model in its own deployment."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from livegen.bench.scaleout import HAPROXY, PLAIN, PROXIED
from livegen.cli import app

pytestmark = pytest.mark.timeout(600)


def test_quick_ray_bench_measures_the_proxy_replicas_and_a_drain(tmp_path):
    # An exception raised in the driver (Ray's, say) reaches pytest with its traceback.
    result = CliRunner().invoke(app, ["bench", "ray", "--quick", "--output", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "ray.json").read_text())
    assert [row["sessions"] for row in r["rows"]] == [1, 4]
    for row in r["rows"]:
        assert set(row["ingress"]) == {HAPROXY, PROXIED}
        for arm, cost in row["ingress"].items():
            assert cost["added_p50_ms"] == pytest.approx(
                cost["latency"][arm]["p50_ms"] - cost["latency"][PLAIN]["p50_ms"], abs=0.01)
            for ratio in (cost["p50_ratio"], cost["p99_ratio"]):
                assert ratio["low"] <= ratio["ratio"] <= ratio["high"]
            assert cost["frames_per_s"][PLAIN] > 0 and cost["frames_per_s"][arm] > 0
    # The ingresses' cost is measured against a replica computing with the plain server's threads.
    assert r["threads"][HAPROXY] == r["threads"][PLAIN] >= 1
    assert 0 < r["ray_idle_cores"] < r["cores"]  # Ray's controller, raylet and HAProxy are never quite idle
    assert set(r["replicas_frames_per_s"]) == {"1", "2"}
    drain = r["drain"]
    assert 0 < drain["moved"] <= drain["sessions"] and len(drain["gaps_s"]) == drain["moved"]
    assert drain["max_s"] == max(drain["gaps_s"]) and drain["max_s"] < 60  # moved, not waited out
    own = r["own_deployment"]
    assert own["frames_per_round"] == 3 and all(ms > 0 for ms in own["p50_ms"].values())
    assert own["ratio"]["low"] <= own["ratio"]["ratio"] <= own["ratio"]["high"]
    text = (tmp_path / "ray.md").read_text()
    assert "Drain:" in text and "deployment of its own" in text
