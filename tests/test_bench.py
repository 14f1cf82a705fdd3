"""`livegen bench ... --quick` run end to end (smoke tests: no timing thresholds asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from livegen.cli import app

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard set, once, in quick mode (StreamDiffusion left out: it needs its own venv)."""
    output = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(app, ["bench", "all", "--quick", "--output", str(output)])
    assert result.exit_code == 0, result.output
    return output


def load(output: Path, scenario: str) -> dict:
    return json.loads((output / f"{scenario}.json").read_text())


def test_summary_reports_each_target(suite: Path):
    summary = (suite / "summary.md").read_text()
    assert "quick mode" in summary
    for target in ("1.3x faster than the direct diffusers call", "as fast per frame as StreamDiffusion",
                   "within 1.5x of the warm median", "at least 10x slower"):
        assert target in summary
    assert "not run (--peers)" in summary
    machine = load(suite, "summary")["machine"]
    assert {"cpu", "cores", "torch", "diffusers", "livegen"} <= set(machine)


def test_warm_measures_every_system_and_plots_their_latency(suite: Path):
    warm = load(suite, "warm")
    assert set(warm["systems"]) == {"livegen", "livegen_new_prompt", "livegen_engine", "direct",
                                    "naive_teacher", "serverless"}
    assert warm["systems"]["livegen"]["n"] == 3 and warm["systems"]["livegen"]["over_livegen"] == 1.0
    assert {"queue_ms", "denoise_ms", "decode_ms", "total_ms"} <= set(warm["server_stages_p50_ms"])
    assert (suite / "latency-cdf.png").read_bytes()[:4] == PNG
    assert warm["command"].startswith("livegen")


def test_cold_starts_a_process_and_compares_its_first_frame(suite: Path):
    cold = load(suite, "cold")
    assert len(cold["runs"]) == 1
    run = cold["runs"][0]
    assert run["start_to_ready_s"] > 0 and run["first_frame_ms"] > 0 and run["first_over_warm_new_prompt"] > 0


def test_load_sweeps_sessions_with_batching_on_and_off(suite: Path):
    rows = load(suite, "load")["rows"]
    for setting in ("micro-batching on (max_batch 8)", "micro-batching off (max_batch 1)"):
        assert [r["sessions"] for r in rows if r["setting"] == setting] == [1, 2, 4, 8, 16, 32]
    assert all(r["frames"] > 0 for r in rows)
    assert (suite / "load.png").read_bytes()[:4] == PNG


def test_interactive_accounts_for_every_input(suite: Path):
    runs = load(suite, "interactive")["runs"]
    assert [run["mode"] for run in runs] == ["raw", "page throttle"]
    for run in runs:
        assert run["inputs"] == 60 and run["errors"] == 0
        # Every input ends as a frame, superseded on the server or dropped in the page.
        assert run["frames"] + run["superseded"] + run["dropped_in_client"] == run["inputs"]
        assert run["frame_latency"]["n"] == run["frames"] > 0


def test_camera_measures_flicker_skips_and_speed(suite: Path):
    camera = load(suite, "camera")
    rows = {(r["input"], r["setting"]): r for r in camera["rows"]}
    assert len(rows) == 6
    for row in rows.values():
        assert row["generated"] + row["skipped"] == row["inputs"] == 6
    assert rows["still", "fresh noise"]["skipped"] == rows["still", "fixed noise"]["skipped"] == 0
    assert rows["still", "fixed noise + similarity filter"]["skipped"] > 0
    assert rows["still", "fixed noise"]["flicker"] < rows["still", "fresh noise"]["flicker"]
    assert set(camera["speed"]) == {"livegen", "direct"}


def test_safety_measures_the_whole_path_each_stage_and_watermark_robustness(suite: Path):
    result = json.loads((suite / "safety.json").read_text())
    assert result["on"]["n"] == result["off"]["n"] > 0
    assert {"moderation", "check", "watermark"} == set(result["stages_in_frame"])
    stages = {row["stage"] for row in result["costs"]}
    assert {"moderation, new prompt", "watermark, 512x512", "Content Credentials, sign a 64x64 JPEG"} <= stages
    assert [row["none"] for row in result["robustness"]][0] == 1.0  # our own mark reads back untouched
    assert "whole safety path" in (suite / "safety.md").read_text()


def test_model_bench_quick_mode_measures_each_step_count(tmp_path):
    result = CliRunner().invoke(app, ["bench", "model", "--quick", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "model.json").read_text())
    assert results["size"] == "64x64" and results["model"] == "emoji"
    for steps in ("1", "2", "4"):
        for path in ("cached_prompt", "uncached_prompt"):
            assert results["steps"][steps][path]["n"] == 3
    assert "| 1 |" in (tmp_path / "model.md").read_text()


def test_gpu_bench_runs_its_whole_path_on_tiny_pipelines(tmp_path):
    result = CliRunner().invoke(app, ["bench", "gpu", "--cpu", "--quick", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "gpu.json").read_text())
    (case,) = results["cases"]
    assert case["architecture"] == "sd-turbo" and not case["compile"]
    assert case["one_session"]["n"] > 0 and case["sessions_8"]["frames_per_s"] > 0
    assert "random" in results["weights"]


def test_speech_bench_measures_ttfa_against_the_whole_reply(tmp_path):
    result = CliRunner().invoke(app, ["bench", "speech", "--quick", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "speech.json").read_text())
    assert results["ttfa"]["n"] == results["replies"] == len(results["rows"])
    assert results["whole_reply"]["n"] == 1 and results["three_sentence_speedup"] > 0
    assert all(row["audio_s"] > 0 and row["underruns"] >= 0 for row in results["rows"])
    for beside in results["beside_images"].values():
        assert beside["ttfa"]["n"] == 2 and beside["frames_per_s"] > 0
    # Decoding a sentence in pieces keeps it closer to the sentence said whole than saying it as two phrases.
    fidelity = results["fidelity"]
    assert 0 < fidelity["two_phrases"] < fidelity["pieces_at_word_ends"] < fidelity["first_piece_then_rest"] < 1
    assert fidelity["sentences"] == 6


def test_speech_similarity_is_one_for_the_same_sound_and_aligns_away_a_delay():
    from livegen.bench.speech import similarity

    tone = np.sin(2 * np.pi * 220 * np.arange(24_000) / 24_000).astype(np.float32)
    assert similarity(tone, tone) == pytest.approx(1.0)
    assert similarity(tone, np.concatenate([np.zeros(2400, np.float32), tone])) > 0.9
    assert similarity(tone, np.random.default_rng(0).normal(size=24_000)) < 0.5


def test_soak_quick_mode_answers_every_input_and_judges_by_its_own_numbers(tiny_sd: Path, tmp_path: Path):
    from livegen.bench.soak import LAG_P99_LIMIT_MS, MEMORY_GROWTH_LIMIT_PCT, verdicts

    result = CliRunner().invoke(app, ["bench", "soak", "--quick", "--model", str(tiny_sd), "--size", "64x64",
                                      "--output", str(tmp_path)])
    soak = load(tmp_path, "soak")
    assert result.exit_code == (0 if soak["passed"] else 1), result.output
    assert soak["counts"]["unanswered"] == 0, soak["unanswered_inputs"]
    assert soak["counts"]["duplicated"] == soak["counts"]["closed by server"] == 0
    assert soak["elapsed_s"] >= soak["nominal_seconds"] == 8 and soak["sessions"] == 8
    assert soak["outcomes"]["frame"] > 0 and soak["outcomes"]["audio"] > 0 and soak["frame_latency"]["n"] > 0
    connections = soak["connections"]
    assert connections["opened"] > soak["sessions"] and connections["server sessions open after"] == 0
    assert connections["dropped with a close frame"] + connections["dropped by cutting the connection"] > 0
    # The verdicts are the numbers read against the targets, and the exit code follows them.
    assert soak["verdicts"] == verdicts(soak)
    assert soak["verdicts"]["memory"] == (soak["memory"]["growth_pct"] <= MEMORY_GROWTH_LIMIT_PCT)
    assert soak["verdicts"]["event_loop_lag"] == (soak["event_loop_lag"]["p99_ms"] <= LAG_P99_LIMIT_MS)
    assert soak["passed"] == all(soak["verdicts"].values())
    assert (tmp_path / "soak.png").read_bytes()[:4] == PNG


def test_soak_verdicts_fail_each_number_past_its_target():
    from livegen.bench.soak import verdicts

    def numbers(**changes) -> dict:
        counts = {"unanswered": 0, "duplicated": 0, "closed by server": 0, "connect gave up": 0}
        r = {"counts": counts, "memory": {"growth_pct": 5.0}, "event_loop_lag": {"p99_ms": 50.0}, "http": {"5xx": 0}}
        for key, value in changes.items():
            if key in counts:
                counts[key] = value
            else:
                r[key] = value
        return r

    assert all(verdicts(numbers()).values())
    failing = {"unanswered": numbers(unanswered=1), "duplicated": numbers(duplicated=1),
               "connections": numbers(**{"closed by server": 1}),
               "memory": numbers(memory={"growth_pct": 5.01}),
               "event_loop_lag": numbers(event_loop_lag={"p99_ms": 75.0}),
               "http_5xx": numbers(http={"5xx": 1})}
    for target, r in failing.items():
        assert [key for key, met in verdicts(r).items() if not met] == [target]
    assert verdicts(numbers(memory=None))["memory"] is None  # a server of someone else's: not measured


def test_soak_reads_lag_p99_as_the_upper_bound_of_the_bucket_holding_it():
    from livegen.bench.soak import lag_between

    before = {"0.01": 100, "0.05": 100, "0.075": 100, "+Inf": 100, "sum": 1.0}
    after = {"0.01": 1050, "0.05": 1090, "0.075": 1100, "+Inf": 1100, "sum": 3.0}  # 1,000 beats in between
    lag = lag_between(before, after)
    assert lag == {"observations": 1000, "mean_ms": 2.0, "p50_ms": 10.0, "p99_ms": 50.0, "max_ms": 75.0}
    assert lag_between(before, {**after, "0.05": 1089})["p99_ms"] == 75.0  # one beat fewer within 50 ms


def test_access_bench_quick_mode_measures_each_arm_and_computes_its_verdict(tmp_path: Path):
    from livegen.bench.access import ARMS, WINDOW_HELD, verdicts

    result = CliRunner().invoke(app, ["bench", "access", "--quick", "--output", str(tmp_path)])
    access = load(tmp_path, "access")
    assert result.exit_code == (0 if access["passed"] else 1), result.output
    assert list(access["per_message"]) == list(ARMS) and set(access["added_ms"]) == set(ARMS[1:])
    for arm in access["per_message"].values():
        assert arm["n"] > 0 and 0 < arm["p50_us"] <= arm["p99_us"]
    # The limits' amounts are out of reach: a refusal makes the run invalid, and the result says so.
    assert access["refused"] == dict.fromkeys(ARMS, 0) and access["refused_end_to_end"] == 0
    assert access["valid"] and "Invalid run" not in (tmp_path / "access.md").read_text()
    # The verdict is the figures read against the target, and the exit code follows it.
    assert access["verdicts"] == verdicts(access) and access["passed"] == all(access["verdicts"].values())
    assert all(row["p50_us"] > 0 for row in access["session_setup"] + access["window"])
    assert len(access["session_setup"]) == 3
    assert [row["pixels_held"] for row in access["window"]] == list(WINDOW_HELD)
    assert not verdicts({**access, "refused_end_to_end": 1})["nothing refused (a valid run)"]
    for arm in ("on", "off"):
        assert access["end_to_end"][arm]["n"] == 6 and access["end_to_end"][arm]["p50_ms"] > 0
    assert access["end_to_end_ratio"] > 0
    assert "0.2 ms" in (tmp_path / "access.md").read_text()
