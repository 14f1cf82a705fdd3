"""`livegen bench access`: what API keys, tokens and the per-client limits cost per input (target: 0.2 ms).

One process, one server (livegen.server.background) on the model, started first; the in-process
parts use its engine, idle meanwhile (`admit` reads engine.models(), which lists only loaded models:
on an engine not started, an input that names no size would spend no pixels at all).
- Per message, on one asyncio event loop, as the WebSocket receive loop runs it: the access work
  for each `generate` (msgpack bytes, as the Python client sends them) before the engine sees it,
  `await _read` (parse, and the session's input-rate spend) and `await admit` (the model check and
  the pixels spend), in three arms: none (parse_client_message alone, as before access existed);
  limits without keys (an address grant); an API key's token with limits of its own (the key's
  windows and the token's are spent). The inputs are paced at a slider's 30 per second with
  `asyncio.sleep`, one per arm per tick, after a short unmeasured warm-up. The ticks go through
  every order of the arms in turn, so that drift hits the arms alike and each comes first, second
  and last as often, and each access arm before the other as often: after each sleep on a busy
  machine the first step pays for cold caches, and an access arm after the other runs its code
  warm (a plain rotation put one access arm before the other in two ticks of three). The limits
  are sliding-window counters (`limits.aio`): a spend reads two counters and adds to one, whatever
  its cost and whatever the window holds, and the memory storage expires counters in an asyncio
  task on the same loop, which runs between inputs. The limits are the server's default windows
  with amounts no input reaches here; the refusals are counted, and a run with any is invalid.
- Beside it, on the same loop: a pixels spend against what the key's window holds (flat, for
  counters), and the process's CPU time outside the measured steps, without spends and with (the
  storage's expiry tasks, and the loop's own pacing).
- Session set-up, once per session: authenticate() of an API key and of a token, and a mint.
- End to end: frames through the server on loopback with a key's token and with no keys, in
  alternating sessions of N frames on the one server and engine (the WebSocket endpoint reads the
  server's Access per connection; the bench swaps in one without keys for the other arm).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from limits import parse
from prometheus_client import CollectorRegistry
from rich.progress import Progress
from websockets.asyncio.client import connect

from livegen.access.gate import Access, Grant
from livegen.access.keys import KeyFile
from livegen.access.rates import Rates
from livegen.access.tokens import TokenLimits, TokenRequest
from livegen.bench.interactive import RATE_HZ
from livegen.bench.report import Series, header, machine_line, save
from livegen.bench.safety import timed
from livegen.bench.warm import PROMPT
from livegen.config import AccessConfig, LimitsConfig, ModelConfig, Settings
from livegen.engine import Engine
from livegen.protocol import Error, Frame, Generate, ProtocolError, decode_server_message, encode, parse_client_message
from livegen.server.background import BackgroundServer
from livegen.server.guard import admit
from livegen.server.websocket import _read

TARGET_MS = 0.2  # added per input at p50, by each access arm over none
ADDRESS = "127.0.0.1"
ROOMY = 10**12  # a limit's amount that no input here reaches
ARMS = ("none", "limits, no keys", "key + token + limits")
BLOCKS = 6  # alternating sessions per end-to-end arm
WARM_S = 1.0  # unmeasured inputs before the measurement: the counters exist, the rates are parsed
WINDOW_HELD = (0, 10**5, 10**6, 10**7)  # pixels a key's window holds before a spend
SPENDS = 200  # timed pixels spends per window row
# The moving window these counters replaced: one 64x64 spend's p50 when the key's window held this
# many pixels (an entry per pixel), measured by this bench on a busy 2-core machine before the change.
MOVING_WINDOW_US = {10**6: 207, 10**7: 5900}
QUICK = {"baseline_s": 1.0, "blocks": 2, "setup_repeats": 50}


def roomy(rate: str) -> str:
    """`rate`'s window with an amount no input here reaches."""
    return f"{ROOMY} per {parse(rate).get_expiry()} seconds"


def roomy_limits() -> tuple[LimitsConfig, TokenLimits]:
    """The server's default limits, their windows kept, for the server and for a token's own."""
    default = LimitsConfig()
    limits = LimitsConfig(inputs_per_session=roomy(default.inputs_per_session),
                          pixels_per_key=roomy(default.pixels_per_key))
    return limits, TokenLimits(inputs_per_session=limits.inputs_per_session, pixels=limits.pixels_per_key)


def micro(series: Series) -> dict[str, float]:
    """Series.summary of the same samples, in microseconds."""
    summary = Series(series.name, [ms * 1000 for ms in series.ms]).summary()
    return {key.replace("_ms", "_us"): value for key, value in summary.items()}


@dataclass
class Arm:
    name: str
    step: Callable[[bytes], object]
    awaited: bool  # the step is a coroutine function, awaited inside the measurement
    series: Series = field(init=False)
    refused: int = 0

    def __post_init__(self) -> None:
        self.series = Series(self.name)


def guarded(access: Access, grant: Grant, engine: Engine, session_id: str) -> Callable[[bytes], Awaitable[None]]:
    """The receive loop's work for a `generate` once access exists (websocket.receive_inputs)."""

    async def step(data: bytes) -> None:
        await admit(access, grant, engine, await _read(data, access, grant, session_id))

    return step


def keyed_access(keys: Path, limits: LimitsConfig) -> Access:
    return Access(AccessConfig(keys_file=keys, limits=limits), CollectorRegistry())


def message_arms(engine: Engine, keys: Path, key: str, limits: LimitsConfig, token_limits: TokenLimits) -> list[Arm]:
    open_access = keyed_access(keys.with_name("no-keys.json"), limits)
    assert not open_access.required
    keyed = keyed_access(keys, limits)
    minted = keyed.mint(keyed.authenticate(key, ADDRESS), TokenRequest(limits=token_limits))
    assert minted.token is not None
    return [Arm(ARMS[0], parse_client_message, awaited=False),
            Arm(ARMS[1], guarded(open_access, open_access.authenticate(None, ADDRESS), engine, "session-b"),
                awaited=True),
            Arm(ARMS[2], guarded(keyed, keyed.authenticate(minted.token, ADDRESS), engine, "session-c"),
                awaited=True)]


async def per_message(arms: list[Arm], seconds: float, warm_s: float, baseline_s: float,
                      progress: Progress) -> dict[str, float]:
    """Inputs at RATE_HZ on this event loop, one per arm per tick, the ticks taking every order of the
    arms in turn: a baseline of the parse alone (no spends), a warm-up (unmeasured), then the
    measurement. Returns the process's CPU milliseconds per second outside the measured steps, in the
    baseline and in the measurement."""
    loop = asyncio.get_running_loop()
    period = 1 / RATE_HZ
    orders = list(itertools.permutations(arms))
    ticks = {"baseline": round(baseline_s * RATE_HZ), "warm": round(warm_s * RATE_HZ),
             "measure": round(seconds * RATE_HZ)}
    task = progress.add_task("per message, paced", total=sum(ticks.values()))
    outside: dict[str, float] = {}
    number = 0
    for phase, count in ticks.items():
        cpu_started, wall_started, in_steps = time.process_time(), time.perf_counter(), 0.0
        due = loop.time()
        for tick in range(count):
            number += 1
            data = encode(Generate(id=str(number), prompt=PROMPT), "msgpack")
            turn = arms[:1] if phase == "baseline" else orders[tick % len(orders)]
            for arm in turn:
                started = time.perf_counter_ns()
                try:
                    if arm.awaited:
                        await arm.step(data)
                    else:
                        arm.step(data)
                except ProtocolError:
                    arm.refused += 1
                    continue
                elapsed_ms = (time.perf_counter_ns() - started) / 1e6
                in_steps += elapsed_ms
                if phase == "measure":
                    arm.series.ms.append(elapsed_ms)
            progress.advance(task)
            due += period
            await asyncio.sleep(max(0.0, due - loop.time()))  # the storage's expiry task runs here
        if count:
            wall = time.perf_counter() - wall_started
            outside[phase] = round(((time.process_time() - cpu_started) * 1000 - in_steps) / wall, 2)
    return {"baseline_cpu_ms_per_s": outside.get("baseline", 0.0), "measure_cpu_ms_per_s": outside["measure"]}


async def window_costs(limits: LimitsConfig, pixels: int, held: tuple[int, ...]) -> list[dict]:
    """One input's pixels spend when the key's window already holds `held` pixels, on this event loop."""
    rates = Rates()
    window_s = parse(limits.pixels_per_key).get_expiry()
    rows = []
    for amount in held:
        who = f"key holding {amount}"
        if amount:
            await rates.take("pixels_per_key", limits.pixels_per_key, who, amount)
        series = Series(f"window holding {amount} pixels")
        for _ in range(SPENDS):
            await asyncio.sleep(0)  # the storage's expiry task runs between spends, as between inputs
            started = time.perf_counter_ns()
            await rates.take("pixels_per_key", limits.pixels_per_key, who, pixels)
            series.ms.append((time.perf_counter_ns() - started) / 1e6)
        rows.append({"pixels_held": amount, "inputs_per_s_at_this_size": round(amount / window_s / pixels, 1),
                     "inputs_per_s_at_512x512": round(amount / window_s / 512**2, 2), **micro(series)})
    return rows


async def in_process(engine: Engine, keys: Path, key: str, limits: LimitsConfig, token_limits: TokenLimits,
                     pixels: int, seconds: float, baseline_s: float, progress: Progress) -> dict:
    """The window table and the paced per-message arms, on one event loop (this one)."""
    window = await window_costs(limits, pixels, WINDOW_HELD)
    arms = message_arms(engine, keys, key, limits, token_limits)
    cpu = await per_message(arms, seconds, WARM_S, baseline_s, progress)
    return {"window": window, "cpu": cpu, "messages": {arm.name: micro(arm.series) for arm in arms},
            "medians": {arm.name: statistics.median(arm.series.ms) if arm.series.ms else float("nan")
                        for arm in arms},
            "refused": {arm.name: arm.refused for arm in arms}}


def session_setup(keys: Path, key: str, limits: LimitsConfig, token_limits: TokenLimits, repeats: int) -> list[dict]:
    access = keyed_access(keys, limits)
    key_grant = access.authenticate(key, ADDRESS)
    request = TokenRequest(limits=token_limits)
    token = access.mint(key_grant, request).token
    rows = [timed(lambda: access.authenticate(key, ADDRESS), repeats, "authenticate an API key"),
            timed(lambda: access.authenticate(token, ADDRESS), repeats,
                  "authenticate a token (JWT verify, its limits read)"),
            timed(lambda: access.mint(key_grant, request), repeats, "mint a token with limits (POST /v1/tokens' work)")]
    return [{"step": series.name, **micro(series)} for series in rows]


async def session_frames(url: str, credential: str | None, frames: int, name: str) -> tuple[Series, int]:
    """One session, frames one after another, as a client with a bearer credential (or none) sends
    them; and how many inputs a limit refused (not timed)."""
    series, refused = Series(name), 0
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    async with connect(url + "/v1/stream", additional_headers=headers, max_size=None) as socket:
        assert decode_server_message(await socket.recv()).type == "hello"
        for i in range(frames):
            started = time.perf_counter()
            await socket.send(encode(Generate(id=str(i), prompt=PROMPT), "msgpack"))
            while getattr(outcome := decode_server_message(await socket.recv()), "id", None) != str(i):
                pass
            if isinstance(outcome, Error) and outcome.code == "rate_limited":
                refused += 1
                continue
            assert isinstance(outcome, Frame), outcome
            series.ms.append((time.perf_counter() - started) * 1000)
    return series, refused


async def end_to_end(server: BackgroundServer, key: str, limits: LimitsConfig, token_limits: TokenLimits,
                     keys: Path, frames: int, blocks: int, progress: Progress) -> tuple[dict[str, Series], int]:
    app = server.server.config.app
    keyed = app.state.access
    open_access = keyed_access(keys.with_name("no-keys.json"), limits)
    arms = {"on": Series("keys + token + limits"), "off": Series("no keys (limits by address)")}
    body = TokenRequest(limits=token_limits).model_dump(exclude_none=True)
    task = progress.add_task("end to end, alternating sessions", total=blocks * 2)
    refused = 0
    async with httpx.AsyncClient(base_url=server.url) as http:
        for block in range(blocks):
            for arm in ("on", "off") if block % 2 == 0 else ("off", "on"):
                credential = None
                if arm == "on":
                    minted = await http.post("/v1/tokens", json=body, headers={"Authorization": f"Bearer {key}"})
                    minted.raise_for_status()
                    credential = minted.json()["token"]
                app.state.access = keyed if arm == "on" else open_access
                series, refusals = await session_frames(server.ws_url, credential, max(1, frames // blocks),
                                                        arms[arm].name)
                arms[arm].ms.extend(series.ms)
                refused += refusals
                progress.advance(task)
    app.state.access = keyed
    return arms, refused


def tiny_model(folder: Path) -> ModelConfig:
    from livegen.models.tiny import build_tiny_pipeline

    return ModelConfig(source=str(build_tiny_pipeline(folder / "tiny-sd")), name="tiny", sizes=[(64, 64)])


def verdicts(r: dict) -> dict[str, bool]:
    """Each access arm's added cost per input at p50 against the target, and a valid run: no input
    refused by a limit, per message or end to end (the limits' amounts are out of reach)."""
    return {**{arm: r["added_ms"][arm] <= r["target_ms"] for arm in ARMS[1:]},
            "nothing refused (a valid run)": sum(r["refused"].values()) + r["refused_end_to_end"] == 0}


def run(config: ModelConfig | None, frames: int, seconds: float, output: Path, quick: bool = False) -> dict:
    """`config` None: a tiny random pipeline (quick mode's smoke test)."""
    plan = QUICK if quick else {"baseline_s": 5.0, "blocks": BLOCKS, "setup_repeats": 1000}
    limits, token_limits = roomy_limits()
    with tempfile.TemporaryDirectory() as folder, Progress() as progress:
        folder_path = Path(folder)
        config = config or tiny_model(folder_path)
        keys = KeyFile(folder_path / "api-keys.json")
        key, _ = keys.create("bench")
        settings = Settings(models=[config], speech=None, access=AccessConfig(keys_file=keys.path, limits=limits))
        settings.safety = settings.safety.model_copy(update={"keys": folder_path / "signing"})
        if quick:  # one session at a time: fewer batch shapes to warm
            settings.max_batch, settings.warmup_runs = 1, 1
        task = progress.add_task("server", total=1)
        server = BackgroundServer(settings)
        progress.advance(task)
        try:
            width, height = server.engine.models()[0].sizes[0]
            setup = session_setup(keys.path, key, limits, token_limits, plan["setup_repeats"])
            measured = asyncio.run(in_process(server.engine, keys.path, key, limits, token_limits, width * height,
                                              seconds, plan["baseline_s"], progress))
            path, refused_path = asyncio.run(end_to_end(server, key, limits, token_limits, keys.path, frames,
                                                        plan["blocks"], progress))
        finally:
            server.stop()
    medians = measured["medians"]
    on, off = (statistics.median(path[arm].ms) for arm in ("on", "off"))
    results = {
        **header("access"), "model": config.display_name, "size": f"{width}x{height}", "quick": quick,
        "target_ms": TARGET_MS, "rate_hz": RATE_HZ, "warm_s": WARM_S, "seconds": seconds,
        "window_s": parse(limits.pixels_per_key).get_expiry(),
        "limits": {"server": limits.model_dump(include={"inputs_per_session", "pixels_per_key"}),
                   "token": token_limits.model_dump(exclude_none=True)},
        "per_message": measured["messages"], "refused": measured["refused"], "refused_end_to_end": refused_path,
        "added_ms": {arm: round(medians[arm] - medians[ARMS[0]], 4) for arm in ARMS[1:]},
        "cpu_outside_steps_ms_per_s": measured["cpu"], "window": measured["window"],
        "moving_window_us_before": {str(held): us for held, us in MOVING_WINDOW_US.items()},
        "session_setup": setup,
        "end_to_end": {arm: series.summary() for arm, series in path.items()},
        "end_to_end_difference_ms": round(on - off, 3), "end_to_end_ratio": round(on / off, 4),
    }
    results["verdicts"] = verdicts(results)
    results["valid"] = results["verdicts"]["nothing refused (a valid run)"]
    results["passed"] = all(results["verdicts"].values())
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    verdict = {True: "met", False: "missed"}
    cpu = r["cpu_outside_steps_ms_per_s"]
    lines = [f"Access control on the {r['model']} model, {r['size']}; {machine_line(r['machine'])}"
             + (" (quick mode: a smoke test, not figures)." if r["quick"] else "."), ""]
    if not r["valid"]:
        lines += [f"**Invalid run**: limits refused {sum(r['refused'].values())} inputs per message and "
                  f"{r['refused_end_to_end']} end to end, where their amounts should be out of reach; the figures "
                  "below do not measure inputs the limits let through.", ""]
    lines += ["| per `generate` input, before the engine sees it | p50 | p99 | added at p50 |", "|---|---|---|---|"]
    for arm, m in r["per_message"].items():
        added = f"{r['added_ms'][arm] * 1000:+.1f} us ({r['added_ms'][arm]:+.4f} ms)" if arm in r["added_ms"] else "-"
        lines.append(f"| {arm} | {m['p50_us']} us | {m['p99_us']} us | {added} |")
    lines += ["", f"- target, at most {r['target_ms']} ms added per input at p50: "
                  f"**{'passed' if r['passed'] else 'failed'}** ("
                  + "; ".join(f"{name}: {verdict[met]}" for name, met in r["verdicts"].items()) + ")",
              f"- {r['per_message'][ARMS[0]]['n']} inputs per arm at {r['rate_hz']} per second (a slider), paced "
              f"with `asyncio.sleep` on one event loop after {r['warm_s']:g} s of the same unmeasured, one input "
              "per arm per tick, the ticks taking every order of the arms in turn (after each sleep the first "
              "step pays for cold caches, and an access arm after the other runs warm); the access arms are "
              "`await _read` and `await admit`, as the receive loop runs them; inputs refused by a limit: "
              + ", ".join(f"{arm} {n}" for arm, n in r["refused"].items()) + f"; end to end {r['refused_end_to_end']}",
              f"- limits: the server's default windows with amounts no input reaches ({r['limits']['server']}); "
              f"the token's own: {r['limits']['token']}",
              "- the limits are sliding-window counters (`limits.aio`, memory storage): a spend reads the previous "
              "and the current window's counters and adds its cost to one, so it costs the same whatever its "
              "cost and whatever the window holds (the table below). The storage expires counters in an asyncio "
              "task on the same event loop, which runs between inputs, outside the measured steps",
              f"- CPU time outside the measured steps (the event loop's pacing, and the storage's expiry tasks "
              f"once spends begin): {cpu['baseline_cpu_ms_per_s']} ms per second with no spends, "
              f"{cpu['measure_cpu_ms_per_s']} ms per second while both access arms spend", "",
              f"| one input's pixels spend ({r['size']}) when the key's window holds | that is, inputs/s at "
              f"{r['size']} | inputs/s at 512x512 | p50 | p99 |", "|---|---|---|---|---|"]
    lines += [f"| {row['pixels_held']:,} pixels | {row['inputs_per_s_at_this_size']} | "
              f"{row['inputs_per_s_at_512x512']} | {row['p50_us']} us | {row['p99_us']} us |" for row in r["window"]]
    before = r["moving_window_us_before"]
    lines += ["", f"- {r['window'][0]['n']} spends per row, each after a turn of the event loop. These counters "
              "replaced the `limits` moving window, which kept an entry per unit spent, so that a spend cost "
              f"what the window held: {before[str(10**6)]} us at 1M pixels held and "
              f"{before[str(10**7)] / 1000:g} ms at 10M, per a 64x64 spend (measured by this bench on a busy "
              "2-core machine before the change)."]
    lines += ["", "| once per session | p50 | p99 |", "|---|---|---|"]
    lines += [f"| {row['step']} | {row['p50_us']} us | {row['p99_us']} us |" for row in r["session_setup"]]
    on, off = r["end_to_end"]["on"], r["end_to_end"]["off"]
    lines += ["", "| frame through the server on loopback (one session per block) | p50 | p95 |", "|---|---|---|",
              f"| keys + token + limits | {on['p50_ms']} ms | {on['p95_ms']} ms |",
              f"| no keys (limits by address) | {off['p50_ms']} ms | {off['p95_ms']} ms |", "",
              f"- difference of the medians: {r['end_to_end_difference_ms']:+.3f} ms (ratio {r['end_to_end_ratio']}), "
              f"{on['n']} frames each in alternating sessions on one server and engine. A frame's time on a CPU "
              "varies by more than the access work, so this shows no regression, not the cost: the target is "
              "checked against the per-input figures above.", ""]
    return "\n".join(lines)
