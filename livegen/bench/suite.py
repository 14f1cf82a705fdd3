"""`livegen bench all` (`make bench`): the standard set of scenarios and a one-page summary.

Runs cold, warm, interactive, load, camera and safety on one model, with StreamDiffusion as a peer when
asked (`--peers`: it needs its own virtual environment, which the bench creates once), then
writes summary.md: the headline figures and each target of the benchmark issue, met or not.
"""

from __future__ import annotations

from pathlib import Path

from livegen.bench import camera, cold, interactive, load, safety, warm
from livegen.bench.report import header, machine_line, save
from livegen.config import ModelConfig

PEER_SESSIONS = 8
PEER_VENV = Path("bench-results") / "streamdiffusion-venv"  # built once, whatever the output folder
SCENARIOS = {"cold": cold, "warm": warm, "interactive": interactive, "load": load, "camera": camera,
             "safety": safety}


def streamdiffusion_peer(config: ModelConfig, frames: int) -> dict:
    from livegen.bench.streamdiffusion import ensure_venv, run_peer

    width, height = config.sizes[0]
    python = ensure_venv(PEER_VENV)
    return run_peer(python, Path(config.source), width, height, frames, PEER_SESSIONS,
                    camera.camera_frames(frames, moving=True))


def run(config: ModelConfig, quick: bool, peers: bool, output: Path) -> dict:
    peer = streamdiffusion_peer(config, 5 if quick else 50) if peers else None
    results = {
        **header("summary"),
        "model": config.display_name,
        "quick": quick,
        "cold": cold.run(config, 1 if quick else 3, 3 if quick else 20, output),
        "warm": warm.run(config, 3 if quick else 50, output, peer),
        "interactive": interactive.run(config, 2.0 if quick else 20.0, 1, output),
        "load": load.run(config, 0.5 if quick else 10.0, output, peer),
        "camera": camera.run(config, 6 if quick else 150, output, peer),
        "safety": safety.run(config, 6 if quick else 120, output, quick),
    }
    save(results, markdown(results), output)
    return results


def targets(r: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each CPU target of the benchmark issue; None: not measured."""
    systems = r["warm"]["systems"]
    livegen_p50 = systems["livegen"]["p50_ms"]
    at_8 = {row["setting"]: row["frames_per_s"] for row in r["load"]["rows"] if row["sessions"] == PEER_SESSIONS}
    batched = next(fps for setting, fps in at_8.items() if setting.startswith("micro-batching on"))
    peer = systems.get("streamdiffusion")
    peer_8 = next((fps for setting, fps in at_8.items() if setting.startswith("StreamDiffusion")), None)
    first = r["cold"]["first_over_warm_new_prompt_median"]
    direct = systems["direct"]["p50_ms"] / livegen_p50
    naive = systems["naive_teacher"]["p50_ms"] / livegen_p50
    return [
        ("warm frame at least 1.3x faster than the direct diffusers call",
         f"{direct:.2f}x ({systems['direct']['p50_ms']} vs {livegen_p50} ms p50)", direct >= 1.3),
        ("at least as fast per frame as StreamDiffusion",
         f"{peer['p50_ms']} vs {livegen_p50} ms p50" if peer else "not run (--peers)",
         peer["p50_ms"] >= livegen_p50 if peer else None),
        (f"ahead of StreamDiffusion in frames/s at {PEER_SESSIONS} sessions",
         f"{batched} vs {peer_8} frames/s" if peer_8 else "not run (--peers)",
         batched > peer_8 if peer_8 else None),
        ("first frame after ready within 1.5x of the warm median", f"{first}x (median of cold starts)", first <= 1.5),
        ("naive many-step server at least 10x slower", f"{naive:.1f}x", naive >= 10),
        ("the whole safety path adds at most 10% to the warm frame", f"{r['safety']['overhead'] * 100:+.1f}%",
         r["safety"]["overhead"] <= 0.10),
    ]


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
