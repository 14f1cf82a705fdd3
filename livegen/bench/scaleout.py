"""`livegen bench ray`: what Ray Serve costs and gives, against the plain server, in one run.

1. Ingress cost: the plain `livegen serve` (its own process) and one Ray Serve replica with the same
   settings, reached two ways: through Serve's HAProxy ingress (livegen's default) and through
   Serve's Python proxy (the HAProxy's fallback, on a port of its own); 1, 8 and 32 sessions in a
   closed loop, the three interleaved in rounds on the same connections (livegen/bench/load.py's
   windows). Frame p50 and p99 for each, the p50 each way adds, and its p99 ratio to the plain
   server's with a bootstrap interval.
2. Replicas: frames/s at 8 sessions with 1 replica, then with 2 (a redeploy between, so these two
   are not interleaved). On this 2-core machine both replicas share the same cores.
3. Drain: sessions streaming over 2 replicas while Serve scales to 1; for each session that was on
   the stopped replica, the gap between its last frame there and its first on the other (the
   client reconnects and resends on its own).
4. A model in a deployment of its own: the same weights twice, once in the ingress replica and
   once in a deployment of their own; one session's frames alternate between the two by the
   message's `model` field, so the second's extra is the hop between deployments.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

from livegen.bench.load import interleaved
from livegen.bench.report import Rounds, header, machine_line, ratio_interval, save
from livegen.client import AsyncClient
from livegen.config import ModelConfig, ModelDeployment, Settings
from livegen.safety import watermark
from livegen.safety.provenance import load_provenance
from livegen.server.background import ServeProcess, free_port

SESSIONS, QUICK_SESSIONS = (1, 8, 32), (1, 4)
ROUNDS, QUICK_ROUNDS = 10, 2  # short windows, many rounds: the host's slow swings cancel
PLAIN = "plain livegen serve"
HAPROXY, PROXIED = "Ray Serve, 1 replica, HAProxy ingress", "Ray Serve, 1 replica, Serve's Python proxy"
REPLICA_SESSIONS = 8
DRAIN_SESSIONS = 6
HOP_FRAMES = 10  # per model and round
IDLE_S = 10.0


def tag(image: bytes) -> int | None:
    """Which replica drew a PNG frame: the server tag in its watermark."""
    payload = watermark.read(np.array(Image.open(io.BytesIO(image)).convert("RGB"))).payload
    return None if payload is None else payload.server


def frames_per_s(windows: list[dict]) -> float:
    """Frames over elapsed time, all of a row's windows together."""
    return round(sum(w["frames"] for w in windows) / sum(w["elapsed_s"] for w in windows), 1)


async def moves(url: str, sessions: int, drain) -> list[float]:
    """Stream `sessions` sessions, run `drain()` in a thread, and return for each session that changed
    replica the gap in seconds between its last frame on the old one and its first on the new one."""
    stop = asyncio.Event()

    async def stream(k: int) -> list[tuple[float, int | None]]:
        frames = []
        async with AsyncClient(url) as client:
            while not stop.is_set():
                frame = await client.generate(f"a smiling cat, number {k}", seed=len(frames), format="png")
                frames.append((time.monotonic(), tag(frame.image)))
        return frames

    tasks = [asyncio.create_task(stream(k)) for k in range(sessions)]
    await asyncio.sleep(2)
    await asyncio.to_thread(drain)
    await asyncio.sleep(3)
    stop.set()
    gaps = []
    for frames in await asyncio.gather(*tasks):
        change = next((i for i in range(1, len(frames)) if frames[i][1] != frames[i - 1][1]), None)
        if change is not None:
            gaps.append(frames[change][0] - frames[change - 1][0])
    return gaps


async def alternating(url: str, names: tuple[str, str], rounds: int, frames: int) -> dict[str, Rounds]:
    """One connection; in each round, frames alternate between the two models."""
    measured = {name: Rounds(name) for name in names}
    async with AsyncClient(url) as client:
        for name in names:  # a first frame per model: not a warm one
            await client.generate("a smiling cat", model=name)
        for _ in range(rounds):
            samples: dict[str, list[float]] = {name: [] for name in names}
            for i in range(frames):
                for name in names:
                    started = time.perf_counter()
                    await client.generate("a smiling cat", model=name, seed=i)
                    samples[name].append((time.perf_counter() - started) * 1000)
            for name in names:
                measured[name].rounds.append(samples[name])
    return measured


def compared(windows: dict[str, list[dict]], arm: str) -> dict:
    """An ingress's frames against the plain server's, from their interleaved windows."""
    frames = {name: Rounds(name, [w["ms"] for w in arm_windows]) for name, arm_windows in windows.items()}
    p99 = {name: Rounds(name, [[float(np.percentile(w["ms"], 99))] for w in arm_windows])
           for name, arm_windows in windows.items()}
    latency = {name: rounds.series().summary() for name, rounds in frames.items()}
    return {"latency": latency, "frames_per_s": {name: frames_per_s(ws) for name, ws in windows.items()},
            "added_p50_ms": round(latency[arm]["p50_ms"] - latency[PLAIN]["p50_ms"], 2),
            "p50_ratio": ratio_interval(frames[arm], frames[PLAIN]),
            "p99_ratio": ratio_interval(p99[arm], p99[PLAIN])}


def cpu_seconds(leave_out: int) -> dict[int, float]:
    """CPU time of each process this driver started (Ray's GCS, raylet, controller, HAProxy and
    replicas), by pid, but `leave_out` and its children: other processes on the machine are not Ray's."""
    left_out = {leave_out} | {child.pid for child in psutil.Process(leave_out).children(recursive=True)}
    seconds = {}
    for process in psutil.Process().children(recursive=True):
        if process.pid not in left_out:
            with contextlib.suppress(psutil.Error):  # ended meanwhile
                times = process.cpu_times()
                seconds[process.pid] = times.user + times.system
    return seconds


def idle_cores(leave_out: int, seconds: float) -> float:
    """The cores Ray's own processes and the idle replica keep busy over `seconds` of quiet, which
    they take from a saturated replica's frames."""
    before, started = cpu_seconds(leave_out), time.monotonic()
    time.sleep(seconds)
    after, elapsed = cpu_seconds(leave_out), time.monotonic() - started
    return round(sum(t - before[pid] for pid, t in after.items() if pid in before) / elapsed, 3)


def cpu_threads(url: str, model: str) -> int:
    """The threads a server's model computes with, as its /readyz says."""
    return httpx.get(f"{url}/readyz").json()["acceleration"][model]["threads"]


def run(config: ModelConfig, seconds: float, output: Path, quick: bool = False) -> dict:
    import ray
    from ray import serve

    from livegen.rayserve.application import cluster, replicas, routed
    from livegen.rayserve.application import deploy as apply

    sessions_list, rounds = (QUICK_SESSIONS, QUICK_ROUNDS) if quick else (SESSIONS, ROUNDS)
    window_s = seconds / rounds
    base = Settings(models=[config], speech=None)
    load_provenance(base.safety.keys)
    port, stats_port, proxy_port = free_port(), free_port(), free_port()
    stats = f"http://127.0.0.1:{stats_port}/stats;csv"

    def deploy(count: int, cpus: float = 1) -> None:
        # Serve's and livegen's defaults otherwise (drain_poll_s too, which costs the controller CPU).
        ray_config = base.ray.model_copy(update={"min_replicas": count, "max_replicas": count, "cpus": cpus})
        apply(base.model_copy(update={"ray": ray_config, "port": port}))
        routed(stats, count)

    def scale_to(count: int) -> None:
        deploy(count)
        while [r["state"] for r in replicas()] != ["RUNNING"] * count:
            time.sleep(0.05)

    plain = ServeProcess.serving(config, args=["--no-speech"])
    env = {"RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
           "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(proxy_port)}
    try:
        with cluster(base.ray, env, num_cpus=4, include_dashboard=False, log_to_driver=False):
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            # A replica computes with as many threads as the CPUs it reserves (Ray sets OMP_NUM_THREADS):
            # to measure the ingress alone, it reserves as many as the plain server uses.
            serve_url = f"http://127.0.0.1:{port}"
            threads = {PLAIN: cpu_threads(plain.url, config.display_name)}
            deploy(1, cpus=threads[PLAIN])
            threads[HAPROXY] = cpu_threads(serve_url, config.display_name)
            ray_idle = idle_cores(plain.process.pid, 2 if quick else IDLE_S)
            urls = {HAPROXY: f"ws://127.0.0.1:{port}", PROXIED: f"ws://127.0.0.1:{proxy_port}"}
            rows = []
            for sessions in sessions_list:
                # One ingress at a time beside the plain server: the other's idle sessions on the same
                # replica would make its batches wait for companions (the runner's active window).
                rows.append({"sessions": sessions, "ingress": {arm: compared(
                    asyncio.run(interleaved({PLAIN: plain.ws_url, arm: urls[arm]}, sessions, rounds, window_s)), arm)
                    for arm in (HAPROXY, PROXIED)}})
            plain.kill()
            replica_fps = {}
            for count in (1, 2):
                scale_to(count)
                threads[f"{count} replica{'s' if count > 1 else ''} at 1 CPU each"] = cpu_threads(serve_url, config.display_name)
                windows = asyncio.run(interleaved({f"{count}": urls[HAPROXY]}, REPLICA_SESSIONS, rounds, window_s))
                replica_fps[str(count)] = frames_per_s(windows[f"{count}"])
            gaps = asyncio.run(moves(urls[HAPROXY], DRAIN_SESSIONS, lambda: scale_to(1)))
            own = config.model_copy(update={"name": f"{config.display_name}-own", "deployment": ModelDeployment()})
            apply(base.model_copy(update={"models": [config, own], "port": port, "ray": base.ray.model_copy(update={
                "min_replicas": 1, "max_replicas": 1, "cpus": 1})}))
            names = (config.display_name, own.display_name)
            hop = asyncio.run(alternating(urls[HAPROXY], names, rounds, 3 if quick else HOP_FRAMES))
    finally:
        plain.kill()
    results = {**header("ray"), "model": config.display_name, "size": "x".join(map(str, config.sizes[0])),
               "ray": ray.__version__, "rounds": rounds, "window_s": round(window_s, 4), "rows": rows,
               "threads": threads, "ray_idle_cores": ray_idle, "cores": os.cpu_count(),
               "replicas_frames_per_s": replica_fps, "replica_sessions": REPLICA_SESSIONS,
               "drain": {"sessions": DRAIN_SESSIONS, "moved": len(gaps), "gaps_s": [round(g, 3) for g in gaps],
                         "median_s": round(statistics.median(gaps), 3) if gaps else None,
                         "max_s": round(max(gaps), 3) if gaps else None},
               "own_deployment": {"frames_per_round": len(hop[names[0]].rounds[0]),
                                  "p50_ms": {"in the ingress": hop[names[0]].series().summary()["p50_ms"],
                                             "own deployment": hop[names[1]].series().summary()["p50_ms"]},
                                  "ratio": ratio_interval(hop[names[1]], hop[names[0]])}}
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    lines = [f"Model `{r['model']}`, {r['size']}, 1 step, Ray {r['ray']}; {machine_line(r['machine'])}. Closed loop; "
             f"each ingress interleaved with the plain server in {r['rounds']} rounds of {r['window_s']} s windows on "
             "the same connections, one ingress after the other; each p99 ratio's 95% interval is over rounds. "
             "Threads the model computes with (the replica reserves as many CPUs as the plain server's threads): "
             + ", ".join(f"{name} {count}" for name, count in r["threads"].items()) + ".", "",
             "| sessions | ingress | plain p50 / p99 ms | through it p50 / p99 ms | p50 added ms | "
             "p50 ratio (95% interval) | p99 ratio (95% interval) | frames/s plain / through it |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        for arm, cost in row["ingress"].items():
            plain, ray = cost["latency"][PLAIN], cost["latency"][arm]
            p50, p99 = cost["p50_ratio"], cost["p99_ratio"]
            lines.append(f"| {row['sessions']} | {arm.removeprefix('Ray Serve, 1 replica, ')} | {plain['p50_ms']} / "
                         f"{plain['p99_ms']} | {ray['p50_ms']} / {ray['p99_ms']} | {cost['added_p50_ms']} | "
                         f"{p50['ratio']}x ({p50['low']}-{p50['high']}) | {p99['ratio']}x ({p99['low']}-{p99['high']}) | "
                         f"{cost['frames_per_s'][PLAIN]} / {cost['frames_per_s'][arm]} |")
    drain = r["drain"]
    lines += ["", f"With one replica and no session, Ray's processes and the idle replica kept {r['ray_idle_cores']} of "
                  f"the machine's {r['cores']} cores busy.",
              f"Frames/s at {r['replica_sessions']} sessions: 1 replica {r['replicas_frames_per_s']['1']}, "
                  f"2 replicas {r['replicas_frames_per_s']['2']} (a redeploy between: not interleaved).",
              f"Drain: {drain['moved']} of {drain['sessions']} streaming sessions were on the stopped replica; "
              f"from their last frame there to their first on the other: median {drain['median_s']} s, "
              f"longest {drain['max_s']} s."]
    own = r["own_deployment"]
    lines += [f"A model in a deployment of its own: frame p50 {own['p50_ms']['own deployment']} ms against "
              f"{own['p50_ms']['in the ingress']} ms for the same weights in the ingress replica, on one "
              f"connection, alternating ({own['frames_per_round']} frames each per round): "
              f"{own['ratio']['ratio']}x ({own['ratio']['low']}-{own['ratio']['high']})."]
    return "\n".join(lines) + "\n"
