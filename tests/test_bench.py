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


def test_interactive_bench_quick_mode_accounts_for_every_input(tmp_path):
    result = CliRunner().invoke(app, ["bench", "interactive", "--quick", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "interactive.json").read_text())
    assert [run["mode"] for run in results["runs"]] == ["raw", "page throttle"]
    for run in results["runs"]:
        assert run["inputs"] == 60 and run["errors"] == 0
        # Every input ends as a frame, superseded on the server or dropped in the page.
        assert run["frames"] + run["superseded"] + run["dropped_in_client"] == run["inputs"]
        assert run["frame_latency"]["n"] == run["frames"] > 0
    assert "| raw |" in (tmp_path / "interactive.md").read_text()


def test_camera_bench_quick_mode_measures_flicker_and_skips(tmp_path):
    result = CliRunner().invoke(app, ["bench", "camera", "--quick", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {(r["input"], r["setting"]): r for r in json.loads((tmp_path / "camera.json").read_text())["rows"]}
    assert len(rows) == 6
    for row in rows.values():
        assert row["generated"] + row["skipped"] == row["inputs"] == 6
    assert rows["still", "fresh noise"]["skipped"] == rows["still", "fixed noise"]["skipped"] == 0
    assert rows["still", "fixed noise + similarity filter"]["skipped"] > 0
    assert rows["still", "fixed noise"]["flicker"] < rows["still", "fresh noise"]["flicker"]
