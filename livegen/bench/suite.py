"""`livegen bench all` (`make bench`): the standard set of scenarios and a one-page summary.

Runs cold, warm, interactive, load, camera and safety on one model, with StreamDiffusion as a peer when
asked (`--peers`: it needs its own virtual environment, which the bench creates once), then
writes summary.md: the headline figures and each target of the benchmark issue, met or not.
"""

from __future__ import annotations

from pathlib import Path

from livegen.bench import camera, cold, interactive, load, safety, warm
from livegen.bench.report import header, machine_line, save
from livegen.bench.streamdiffusion import ensure_venv
from livegen.config import ModelConfig

PEER_SESSIONS = 8
PEER_VENV = Path("bench-results") / "streamdiffusion-venv"  # built once, whatever the output folder
SCENARIOS = {"cold": cold, "warm": warm, "interactive": interactive, "load": load, "camera": camera,
             "safety": safety}


def streamdiffusion_peer(config: ModelConfig, frames: int) -> dict:
    from livegen.bench.streamdiffusion import run_peer

    width, height = config.sizes[0]
    python = ensure_venv(PEER_VENV)
    return run_peer(python, Path(config.source), width, height, frames, PEER_SESSIONS)


def run(config: ModelConfig, quick: bool, peers: bool, output: Path) -> dict:
    peer = streamdiffusion_peer(config, 5 if quick else 50) if peers else None
    peer_python = ensure_venv(PEER_VENV) if peers else None
    results = {
        **header("summary"),
        "model": config.display_name,
        "quick": quick,
        "cold": cold.run(config, 1 if quick else 3, 3 if quick else 20, output),
        "warm": warm.run(config, output=output, peer_python=peer_python,
                         **(warm.QUICK if quick else {"rounds": 10, "block": 5})),
        "interactive": interactive.run(config, 2.0 if quick else 20.0, 1, output),
        "load": load.run(config, 0.5 if quick else 10.0, output, peer),
        "camera": camera.run(config, 6 if quick else 150, output, peer_python),
        "safety": safety.run(config, 6 if quick else 120, output, quick),
    }
    save(results, markdown(results), output)
    return results


def _ahead_of_streamdiffusion(r: dict, key: str) -> tuple[str, bool | None]:
    """Met when the interval of StreamDiffusion's frame over livegen's lies entirely above 1."""
    systems = r["warm"]["systems"]
    if key not in systems:
        return "not run (--peers)", None
    peer, livegen = systems[key], systems[warm.BASELINE[systems[key]["mode"]]]
    over = peer["over_livegen"]
    return f"{peer['p50_ms']} vs {livegen['p50_ms']} ms p50; {warm.interval(over)}", over["low"] > 1


def _near_tuned_direct(r: dict) -> tuple[str, bool | None]:
    """livegen over tuned direct, the interval's far end at most 1.1 (the bench stores tuned over livegen)."""
    systems = r["warm"]["systems"]
    over = systems["direct_tuned"]["over_livegen"]
    return (f"{1 / over['ratio']:.2f}x ({1 / over['high']:.2f}-{1 / over['low']:.2f}); "
            f"{systems['livegen']['p50_ms']} vs {systems['direct_tuned']['p50_ms']} ms p50"), 1 / over["low"] <= 1.1


def _new_prompt(r: dict) -> tuple[str, bool | None]:
    new = r["warm"]["new_over_cached"]
    return warm.interval(new), new["high"] <= 1.3


def _at_8_sessions(r: dict) -> tuple[str, bool | None]:
    at_8 = {row["setting"]: row["frames_per_s"] for row in r["load"]["rows"] if row["sessions"] == PEER_SESSIONS}
    batched = next(fps for setting, fps in at_8.items() if setting.startswith("micro-batching on"))
    peer = next((fps for setting, fps in at_8.items() if setting.startswith("StreamDiffusion")), None)
    return (f"{batched} vs {peer} frames/s", batched > peer) if peer else ("not run (--peers)", None)


def _first_frame(r: dict) -> tuple[str, bool | None]:
    cached, new = r["cold"]["first_over_warm_cached_median"], r["cold"]["first_over_warm_new_prompt_median"]
    return f"{cached}x the cached-prompt median, {new}x the new-prompt median (medians of cold starts)", cached <= 1.5


def _naive(r: dict) -> tuple[str, bool | None]:
    over = r["warm"]["systems"]["naive_teacher"]["over_livegen"]["ratio"]
    return f"{over:.1f}x livegen's new-prompt frame", over >= 10


def _safety(r: dict) -> tuple[str, bool | None]:
    return f"{r['safety']['overhead'] * 100:+.1f}%", r["safety"]["overhead"] <= 0.10


TARGETS = [
    ("ahead of StreamDiffusion per frame, cached prompt (interval of the ratio above 1)",
     lambda r: _ahead_of_streamdiffusion(r, "streamdiffusion")),
    ("ahead of StreamDiffusion per frame, a new prompt every frame (interval above 1)",
     lambda r: _ahead_of_streamdiffusion(r, "streamdiffusion_new_prompt")),
    ("frame over the WebSocket within 1.1x of the tuned direct diffusers call (whole interval)", _near_tuned_direct),
    ("a new prompt every frame at most 1.3x a cached frame (whole interval)", _new_prompt),
    (f"ahead of StreamDiffusion in frames/s at {PEER_SESSIONS} sessions", _at_8_sessions),
    ("first frame after ready within 1.5x of the warm median", _first_frame),
    ("naive many-step server at least 10x slower", _naive),
    ("the whole safety path adds at most 10% to the warm frame", _safety),
]


def targets(r: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each CPU target of the benchmark issues; None: not measured, never met."""
    rows = []
    for name, measure in TARGETS:
        try:
            measured, met = measure(r)
        except (KeyError, TypeError, StopIteration, ZeroDivisionError):  # its data is missing
            measured, met = "not measured", None
        rows.append((name, measured, met))
    return rows


def markdown(r: dict) -> str:
    m = r["machine"]
    mark = {True: "met", False: "**not met**", None: "not measured"}
    lines = [f"# livegen bench: {r['model']}{' (quick mode: smoke test, not figures)' if r['quick'] else ''}", "",
             f"{machine_line(m)}; torch {m['torch']}, "
             f"diffusers {m['diffusers']}. Command: `{r['command']}`.", "",
             "| target | measured | |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {mark[met]} |" for name, measured, met in targets(r)]
    for name, scenario in SCENARIOS.items():
        lines += ["", f"## {name}", "", scenario.markdown(r[name])]
    return "\n".join(lines)
