"""`livegen bench warm|model --quick` run end to end (smoke tests: no thresholds asserted)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from livegen.cli import app


def test_warm_bench_quick_mode_writes_results(tiny_sd, tmp_path):
    result = CliRunner().invoke(app, ["bench", "warm", "--quick", "--model", str(tiny_sd), "--size", "64x64",
                                      "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "warm.json").read_text())
    for path in ("direct", "engine", "websocket", "websocket_overhead"):
        assert results[path]["n"] == 3
    assert results["first_frame_over_warm_median"] > 0
    assert "| direct diffusers call |" in (tmp_path / "warm.md").read_text()


def test_model_bench_quick_mode_measures_each_step_count(tmp_path):
    result = CliRunner().invoke(app, ["bench", "model", "--quick", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "model.json").read_text())
    assert results["size"] == "64x64" and results["model"] == "emoji"
    for steps in ("1", "2", "4"):
        for path in ("cached_prompt", "uncached_prompt"):
            assert results["steps"][steps][path]["n"] == 3
    assert "| 1 |" in (tmp_path / "model.md").read_text()
