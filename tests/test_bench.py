"""`livegen bench ... --quick` run end to end: no timing thresholds, but each scenario's figures are
checked against each other (rates over elapsed times, ratios of the medians reported, intervals
around their ratio, the stages counted in each safety row). The warm scenario and the summary's
targets are tested in tests/test_bench_warm.py, on the same quick suite (conftest's `suite`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from livegen.cli import app

PNG = b"\x89PNG"
# The whole quick suite runs in the first of these tests' setup: more than the default per-test limit
# on a shared 2-core machine.
def load(output: Path, scenario: str) -> dict:
    return json.loads((output / f"{scenario}.json").read_text())


def within(value: float, expected: float, places: int = 2) -> bool:
    """A figure rounded to `places` agrees with the one recomputed from the figures beside it."""
    return abs(value - expected) <= 1.5 * 10 ** -places


def check_interval(ratio: dict, rounds: int) -> None:
    assert ratio["rounds"] == rounds and ratio["level"] == 0.95
    assert 0 < ratio["low"] <= ratio["ratio"] <= ratio["high"]


def test_summary_holds_each_scenarios_own_figures(suite: Path):
    summary = load(suite, "summary")
    assert summary["quick"] and "quick mode" in (suite / "summary.md").read_text()
    for scenario in ("cold", "load", "camera", "safety", "interactive"):
        # The one-page summary shows the figures its scenario wrote, not figures of another run.
        assert summary[scenario] == load(suite, scenario)
        assert (suite / f"{scenario}.md").read_text().strip() in (suite / "summary.md").read_text()
    assert {"cpu", "cores", "torch", "diffusers", "livegen"} <= set(summary["machine"])
    assert (suite / "latency-cdf.png").read_bytes()[:4] == PNG


def test_cold_reports_the_first_frame_against_both_warm_medians(suite: Path):
    cold = load(suite, "cold")
    (run,) = cold["runs"]
    assert run["start_to_ready_s"] > 0 and run["warm_rounds"] == 3
    assert run["cache"] == "empty", "the first start of a run has nothing kept from the developer's own starts"
    first, cached, new = run["first_frame_ms"], run["warm_cached_p50_ms"], run["warm_new_prompt_p50_ms"]
    # Each ratio is the first frame over the median the row reports.
    assert within(run["first_over_warm_cached"], first / cached)
    assert within(run["first_over_warm_new_prompt"], first / new)
    assert within(run["new_over_cached"]["ratio"], new / cached)
    check_interval(run["new_over_cached"], 3)
    assert cold["first_over_warm_cached_median"] == run["first_over_warm_cached"]
    assert cold["first_over_warm_new_prompt_median"] == run["first_over_warm_new_prompt"]
    text = (suite / "cold.md").read_text()
    assert f"{run['first_over_warm_cached']}x" in text and f"{run['first_over_warm_new_prompt']}x" in text
    # Speech the same way: the first reply's time to audio over the later replies' median.
    assert run["first_audio_ms"] > 0 and run["warm_audio_p50_ms"] > 0
    assert within(run["first_audio_over_warm"], run["first_audio_ms"] / run["warm_audio_p50_ms"])
    assert cold["first_audio_over_warm_median"] == run["first_audio_over_warm"]
    assert f"{run['first_audio_over_warm']}x" in text


def test_load_divides_by_elapsed_time_and_interleaves_batching_on_and_off(suite: Path):
    import statistics

    result = load(suite, "load")
    rows = {(r["setting"], r["sessions"]): r for r in result["rows"]}
    on, off = "micro-batching on (max_batch 8)", "micro-batching off (max_batch 1)"
    assert [s for setting, s in rows if setting == on] == [s for setting, s in rows if setting == off] \
        == [1, 2, 4, 8, 16, 32]
    assert result["rounds"] == 2
    for row in rows.values():
        assert row["frames"] > 0 and row["rounds"] == 2 and len(row["frames_per_s_rounds"]) == 2
        # Every window runs until its last frame arrives, so it lasts at least its nominal length,
        # and frames/s are the frames over that elapsed time.
        assert row["elapsed_s"] >= row["nominal_s"] > 0
        assert within(row["frames_per_s"], row["frames"] / row["elapsed_s"], 1)
        assert row["latency"]["n"] == row["frames"]
    for sessions in (1, 2, 4, 8, 16, 32):
        ratio = rows[on, sessions]["on_over_off_frames_per_s"]
        check_interval(ratio, 2)
        expected = (statistics.median(rows[on, sessions]["frames_per_s_rounds"])
                    / statistics.median(rows[off, sessions]["frames_per_s_rounds"]))
        assert within(ratio["ratio"], expected, 2)
    assert (suite / "load.png").read_bytes()[:4] == PNG


def test_interactive_accounts_for_every_input_over_the_elapsed_time(suite: Path):
    interactive = load(suite, "interactive")
    assert interactive["format"] == "JPEG q85"
    runs = interactive["runs"]
    assert [run["mode"] for run in runs] == ["raw", "page throttle"]
    for run in runs:
        assert run["inputs"] == 60 and run["errors"] == 0
        # Every input ends as a frame, superseded on the server or dropped in the page.
        assert run["frames"] + run["superseded"] + run["dropped_in_client"] == run["inputs"]
        assert run["frame_latency"]["n"] == run["frames"] > 0
        # Frames still arrive after the last input is sent: the rate is over the whole elapsed time.
        assert run["elapsed_s"] >= run["seconds"] > 0
        assert within(run["frames_per_s"], run["frames"] / run["elapsed_s"], 1)


def test_camera_measures_flicker_skips_and_speed_in_one_format(suite: Path):
    camera = load(suite, "camera")
    rows = {(r["input"], r["setting"]): r for r in camera["rows"]}
    assert len(rows) == 6
    for row in rows.values():
        assert row["generated"] + row["skipped"] == row["inputs"] == 6
    assert rows["still", "fresh noise"]["skipped"] == rows["still", "fixed noise"]["skipped"] == 0
    assert rows["still", "fixed noise + similarity filter"]["skipped"] > 0
    assert rows["still", "fixed noise"]["flicker"] < rows["still", "fresh noise"]["flicker"]
    speed = camera["speed"]
    assert set(speed) == {"livegen", "direct"} and camera["speed_rounds"] == 2
    assert speed["livegen"]["encode"] == speed["direct"]["encode"] == "JPEG q85"
    assert speed["livegen"]["n"] == speed["direct"]["n"] == 2 * (6 // 2)
    ratio = speed["direct"]["over_livegen"]
    check_interval(ratio, 2)
    assert within(ratio["ratio"], speed["direct"]["p50_ms"] / speed["livegen"]["p50_ms"])


def test_safety_rows_say_which_stages_ran(suite: Path):
    result = load(suite, "safety")
    n = result["on"]["n"]
    assert n == result["off"]["n"] == result["on_new_prompts"]["n"] == result["off_new_prompts"]["n"] > 0
    assert result["configured"]["output_checker"] is None and result["configured"]["watermark"]
    ran = result["ran"]
    # A fixed prompt is judged once and then comes from the cache; a new prompt is judged every frame.
    assert ran["on"]["moderation_verdicts_computed"] <= 1
    assert ran["on"]["moderation_verdicts_computed"] + ran["on"]["moderation_verdicts_cached"] == n
    assert ran["on, new prompts"]["moderation_verdicts_computed"] == n
    assert ran["on, new prompts"]["moderation_verdicts_cached"] == 0
    for arm in ("on", "on, new prompts"):
        assert ran[arm]["frames_watermarked"] == n and ran[arm]["output_checker"] is None
    for arm in ("off", "off, new prompts"):
        assert ran[arm]["frames_watermarked"] == ran[arm]["moderation_verdicts_computed"] == 0
        assert ran[arm]["moderation_verdicts_cached"] == 0
    for name, ratio in result["ratios"].items():
        check_interval(ratio, result["blocks"])
    assert result["overhead"] == round(result["ratios"]["on_over_off"]["ratio"] - 1, 4)
    assert within(result["ratios"]["on_over_off"]["ratio"], result["on"]["p50_ms"] / result["off"]["p50_ms"])
    assert {"moderation", "check", "watermark"} == set(result["stages_in_frame"])
    stages = {row["stage"] for row in result["costs"]}
    assert {"moderation, new prompt", "watermark, 512x512", "Content Credentials, sign a 64x64 JPEG"} <= stages
    assert [row["none"] for row in result["robustness"]][0] == 1.0  # our own mark reads back untouched
    text = (suite / "safety.md").read_text()
    assert "verdict computed every frame" in text and "no output checker configured" in text


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
    result = CliRunner().invoke(app, ["bench", "gpu", "--cpu", "--output", str(tmp_path), "--cache",
                                      str(tmp_path / "models")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "gpu.json").read_text())
    cases = {case["label"]: case for case in results["cases"]}
    assert [(c["architecture"], c["steps"], c["served"]) for c in cases.values()] == [
        ("sd-turbo", 1, False), ("sd-turbo", 1, True), ("sdxl-turbo", 1, False), ("lcm-sd15", 4, False),
        ("sd-turbo", 1, False), ("flux-schnell", 4, False)]
    for case in cases.values():
        assert "error" not in case, case["label"]
        assert case["one_session"]["n"] > 0 and case["sessions_8"]["frames_per_s"] > 0
        assert case["one_session_image_to_image"]["n"] > 0
        assert ("gpu_floor" in case) != case["served"]
    unet = cases["sd-turbo 64x64 1 step float32 graphs tiny-vae"]
    assert unet["acceleration"]["mode"] == "TorchScript traces"  # CUDA graphs need CUDA
    served = cases["sd-turbo 64x64 1 step float32 graphs tiny-vae served"]
    assert served["acceleration"]["mode"] == "TorchScript traces" and served["start_to_ready_s"] > 0
    assert served["one_session"]["stages_p50_ms"]["wire_encode_ms"] > 0
    assert "Uvicorn running" in (tmp_path / "serve.log").read_text()
    assert results["targets"]["sd_turbo_p50_case"].endswith("served")  # a client's view when there is one
    assert "random" in results["weights"]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`livegen bench speech --quick`, once for the tests below."""
    output = tmp_path_factory.mktemp("speech")
    result = CliRunner().invoke(app, ["bench", "speech", "--quick", "--output", str(output)])
    assert result.exit_code == 0, result.output
    return load(output, "speech")


# The quick speech run takes minutes on a shared 2-core machine, in the setup of the first of these.
speech_timeout = pytest.mark.timeout(600)


@speech_timeout
def test_speech_bench_measures_ttfa_against_the_whole_reply(speech):
    results = speech
    assert results["ttfa"]["n"] == results["replies"] == len(results["rows"])
    assert results["whole_reply"]["n"] == 1
    assert all(row["audio_s"] > 0 for row in results["rows"])
    assert results["underruns"] == sum(row["underruns"] for row in results["rows"])
    assert all(row["moderation_ms"] > 0 for row in results["rows"])  # every reply's phrases were checked
    assert within(results["three_sentence_speedup"],
                  results["whole_reply"]["p50_ms"] / results["three_sentences"]["p50_ms"])
    for beside in results["beside_images"].values():
        assert beside["ttfa"]["n"] == 2 and beside["frames_per_s"] > 0
    # Decoding a sentence in pieces keeps it closer to the sentence said whole than saying it as two phrases
    # (Piper's pieces join sample for sample: 1; Kokoro's normalize over each piece, so more joins cost more).
    fidelity = results["fidelity"]
    assert 0 < fidelity["two_phrases"] < fidelity["pieces_at_word_ends"] <= fidelity["first_piece_then_rest"] <= 1
    assert 5 <= fidelity["sentences"] <= 6  # a first sentence said as one piece ("Okay, done.") has nothing to cut


@speech_timeout
def test_speech_bench_hears_1_4_and_8_voices_at_once_and_measures_what_a_barge_in_leaves(speech):
    from livegen.bench.speech import SESSIONS

    results = speech
    sessions = results["sessions"]
    assert [sessions[str(n)]["sessions"] for n in SESSIONS] == list(SESSIONS)
    assert [sessions[str(n)]["replies"] for n in SESSIONS[1:]] == list(SESSIONS[1:])  # one reply each
    assert sessions["1"]["ttfa"] == results["ttfa"]
    for row in results["rows"]:  # the first sound is heard in a chunk that has arrived, never before the first
        assert row["first_chunk_ms"] <= row["ttfa_ms"] < row["first_chunk_ms"] + row["audio_s"] * 1000

    (barge_in,) = results["barge_in"].values()
    assert [row["by"] for row in barge_in["rows"]] == ["cancel", "new utterance"]
    # A quick run interrupts on the reply's first chunk, while the rest of it is still being said.
    stopped = [row for row in barge_in["rows"] if row["cancelled"]]
    assert barge_in["window_s"] > 0 and barge_in["cancelled"] == len(stopped) == barge_in["trials"] == 2
    assert barge_in["audio_after_cancelled"] == 0, "no audio of a cancelled reply follows its `cancelled`"
    for row in stopped:
        assert 0 < row["cancelled_ms"] and row["last_late_sample_ms"] <= row["cancelled_ms"]  # late audio first
        assert (row["late_chunks"] == 0) == (row["late_audio_ms"] == 0)
    assert (barge_in["new_reply_ttfa"] or {"n": 0})["n"] == sum("new_reply_ttfa_ms" in row for row in stopped)

    # What the checks cost, from the replies new to the server (the first round: all of them in a quick run).
    checks, rows = results["checks"], results["rows"]
    assert checks["moderation_per_reply"]["n"] == results["replies"]
    synthesis = [row["synth_ms"] - row["moderation_ms"] for row in rows]  # the worker's time holds moderation
    assert within(checks["moderation_share_pct"]["max"],
                  max(100 * row["moderation_ms"] / s for row, s in zip(rows, synthesis)))
    assert all(row["watermark_ms"] > 0 for row in rows)  # every chunk is marked
    assert within(checks["together_share_pct"]["max"],
                  max(100 * (row["moderation_ms"] + row["watermark_ms"]) / s for row, s in zip(rows, synthesis)))


def test_speech_first_sound_is_the_first_loud_window_when_a_player_gets_to_it():
    from livegen.bench.speech import played_at, sound_onset

    rate = 24_000
    tone = (3000 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)).astype("<i2")  # about -21 dBFS
    hiss = np.random.default_rng(0).normal(0, 60, rate // 10).astype("<i2")  # about -55 dBFS: silence
    assert sound_onset(np.concatenate([hiss, tone]), rate) == rate // 10
    assert sound_onset(hiss, rate) is None
    # (arrival s, samples): the sound starts in the second chunk, played once it arrives...
    assert played_at([(0.0, 2400), (0.5, 2400)], 2400, rate) == pytest.approx(0.5)
    # ...or once the first has played, if it came early; a sample inside a chunk is heard that far into it.
    assert played_at([(0.0, 2400), (0.05, 2400)], 2400, rate) == pytest.approx(0.1)
    assert played_at([(0.2, 2400)], 1200, rate) == pytest.approx(0.25)


def test_speech_barge_in_counts_the_old_audio_that_arrives_after_the_interruption():
    from livegen.bench.speech import interruption
    from livegen.protocol import Audio, Cancelled

    rate, loud = 24_000, np.full(2400, 3000, "<i2").tobytes()  # 100 ms chunks

    def chunk(id: str, seq: int, pcm: bytes = bytes(4800)) -> Audio:
        return Audio(id=id, seq=seq, sample_rate=rate, pcm=pcm)

    sent = 10.15  # the interruption: two chunks of the old reply in hand, the second half played
    heard = [(10.0, chunk("old", 0)), (10.1, chunk("old", 1)), (10.16, chunk("old", 2)),
             (10.17, Cancelled(id="old", by="new")), (10.2, chunk("old", 3)), (10.3, chunk("new", 0, loud))]
    row = interruption(heard, "old", "new", sent)
    assert row["late_chunks"] == 2 and row["late_audio_ms"] == pytest.approx(200)
    assert row["last_late_sample_ms"] == pytest.approx(50) and row["cancelled_ms"] == pytest.approx(20)
    assert row["buffered_ms"] == pytest.approx(50) and row["audio_after_cancelled"] == 1
    assert row["new_reply_ttfa_ms"] == pytest.approx(150) and row["cancelled"]


def test_speech_playback_counts_a_gap_only_when_a_chunk_comes_after_the_audio_before_it_ran_out():
    from livegen.bench.speech import PLAYOUT_DELAY_S, playback

    # (arrival s, duration s): each chunk arrives while the one before is still playing.
    steady = [(0.0, 0.5), (0.3, 0.5), (0.6, 0.5)]
    assert playback(steady) == 0
    # The second chunk arrives after the first (and the jitter buffer) ran out: one gap.
    assert playback([(0.0, 0.1), (0.1 + PLAYOUT_DELAY_S + 0.01, 0.5)]) == 1
    assert playback([(0.0, 0.1), (0.1 + PLAYOUT_DELAY_S - 0.01, 0.5)]) == 0
    # After a gap the player buffers again, so the clock restarts from the late chunk.
    assert playback([(0.0, 0.1), (1.0, 0.1), (1.0 + 0.1 + PLAYOUT_DELAY_S + 0.01, 0.1)]) == 2


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
