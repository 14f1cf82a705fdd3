"""`livegen bench access`: what API keys, tokens and the per-client limits cost per input (target: 0.2 ms).

One process, one server (livegen.server.background) on the model, started first; the in-process
parts use its engine, idle meanwhile (`admit` reads engine.models(), which lists only loaded models:
on an engine not started, an input that names no size would spend no pixels at all).
- Per message: the access work the WebSocket receive loop does for each `generate` (msgpack bytes,
  as the Python client sends them) before the engine sees it: `_read` (parse, and the session's
  input-rate spend) and `admit` (the model check and the pixels spend), in three arms: none (the
  parse alone, as before access existed); limits without keys (an address grant); an API key's
  token with limits of its own (the key's windows and the token's are spent). The inputs are paced
  at a slider's 30 per second after one pixel window (10 s) of the same, one per arm per tick in
  rotating order, so that drift hits the arms alike: the `limits` library's moving window keeps an
  entry per unit spent (a pixel, for the pixels limit), so a spend costs what the window holds,
  and a tight loop would measure a window no client fills. The limits are the server's default
  windows with amounts no input reaches here; the refusals are counted (0 for a valid run).
- Beside it: a pixels spend against what the key's window holds, and the process's CPU time
  outside the measured steps, without spends and with (the library expires windows on a timer
  thread, a pass after spends).
- Session set-up, once per session: authenticate() of an API key and of a token, and a mint.
- End to end: frames through the server on loopback with a key's token and with no keys, in
  alternating sessions of N frames on the one server and engine (the WebSocket endpoint reads the
  server's Access per connection; the bench swaps in one without keys for the other arm).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
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
from livegen.protocol import Frame, Generate, ProtocolError, decode_server_message, encode, parse_client_message
from livegen.server.background import BackgroundServer
from livegen.server.guard import admit
from livegen.server.websocket import _read

TARGET_MS = 0.2  # added per input at p50, by each access arm over none
ADDRESS = "127.0.0.1"
ROOMY = 10**12  # a limit's amount that no input here reaches: each window holds all it is given
ARMS = ("none", "limits, no keys", "key + token + limits")
BLOCKS = 6  # alternating sessions per end-to-end arm
WINDOW_HELD = (0, 10**5, 10**6, 10**7)  # pixels a key's window holds before a spend
SPENDS = 20  # timed pixels spends per window row
QUICK = {"baseline_s": 1.0, "fill_s": 0.0, "blocks": 2, "setup_repeats": 50, "held": WINDOW_HELD[:3]}


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
    series: Series = field(init=False)
    refused: int = 0

    def __post_init__(self) -> None:
        self.series = Series(self.name)


def guarded(access: Access, grant: Grant, engine: Engine, session_id: str) -> Callable[[bytes], object]:
    """The receive loop's work for a `generate` once access exists (websocket.receive_inputs)."""

    def step(data: bytes) -> None:
        admit(access, grant, engine, _read(data, access, grant, session_id))

    return step


def keyed_access(keys: Path, limits: LimitsConfig) -> Access:
    return Access(AccessConfig(keys_file=keys, limits=limits), CollectorRegistry())


def message_arms(engine: Engine, keys: Path, key: str, limits: LimitsConfig, token_limits: TokenLimits) -> list[Arm]:
    open_access = keyed_access(keys.with_name("no-keys.json"), limits)
    assert not open_access.required
    keyed = keyed_access(keys, limits)
    minted = keyed.mint(keyed.authenticate(key, ADDRESS), TokenRequest(limits=token_limits))
    assert minted.token is not None
    return [Arm(ARMS[0], parse_client_message),
            Arm(ARMS[1], guarded(open_access, open_access.authenticate(None, ADDRESS), engine, "session-b")),
            Arm(ARMS[2], guarded(keyed, keyed.authenticate(minted.token, ADDRESS), engine, "session-c"))]


def per_message(arms: list[Arm], seconds: float, fill_s: float, baseline_s: float,
                progress: Progress) -> dict[str, float]:
    """Inputs at RATE_HZ, one per arm per tick in rotating order: a baseline of the parse alone (no
    spends), a fill of one window (unmeasured), then the measurement. Returns the process's CPU
    milliseconds per second outside the measured steps, in the baseline and in the measurement."""
    period = 1 / RATE_HZ
    ticks = {"baseline": round(baseline_s * RATE_HZ), "fill": round(fill_s * RATE_HZ),
             "measure": round(seconds * RATE_HZ)}
    task = progress.add_task("per message, paced", total=sum(ticks.values()))
    outside: dict[str, float] = {}
    number = 0
    for phase, count in ticks.items():
        cpu_started, wall_started, in_steps = time.process_time(), time.perf_counter(), 0.0
        due = time.perf_counter()
        for tick in range(count):
            number += 1
            data = encode(Generate(id=str(number), prompt=PROMPT), "msgpack")
            turn = arms[:1] if phase == "baseline" else arms[tick % len(arms):] + arms[:tick % len(arms)]
            for arm in turn:
                started = time.perf_counter_ns()
                try:
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
            time.sleep(max(0.0, due - time.perf_counter()))
        if count:
            wall = time.perf_counter() - wall_started
            outside[phase] = round(((time.process_time() - cpu_started) * 1000 - in_steps) / wall, 2)
    return {"baseline_cpu_ms_per_s": outside.get("baseline", 0.0), "measure_cpu_ms_per_s": outside["measure"]}


def window_costs(limits: LimitsConfig, pixels: int, held: tuple[int, ...]) -> list[dict]:
    """One input's pixels spend when the key's window already holds `held` pixels."""
    rates = Rates()
    window_s = parse(limits.pixels_per_key).get_expiry()
    rows = []
    for amount in held:
        who = f"key holding {amount}"
        if amount:
            rates.take("pixels_per_key", limits.pixels_per_key, who, amount)
        series = timed(lambda who=who: rates.take("pixels_per_key", limits.pixels_per_key, who, pixels), SPENDS,
                       f"window holding {amount} pixels")
        rows.append({"pixels_held": amount, "inputs_per_s_at_this_size": round(amount / window_s / pixels, 1),
                     "inputs_per_s_at_512x512": round(amount / window_s / 512**2, 2), **micro(series)})
    return rows


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


async def session_frames(url: str, credential: str | None, frames: int, name: str) -> Series:
    """One session, frames one after another, as a client with a bearer credential (or none) sends them."""
    series = Series(name)
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    async with connect(url + "/v1/stream", additional_headers=headers, max_size=None) as socket:
        assert decode_server_message(await socket.recv()).type == "hello"
        for i in range(frames):
            started = time.perf_counter()
            await socket.send(encode(Generate(id=str(i), prompt=PROMPT), "msgpack"))
            while getattr(outcome := decode_server_message(await socket.recv()), "id", None) != str(i):
                pass
            assert isinstance(outcome, Frame), outcome
            series.ms.append((time.perf_counter() - started) * 1000)
    return series


async def end_to_end(server: BackgroundServer, key: str, limits: LimitsConfig, token_limits: TokenLimits,
                     keys: Path, frames: int, blocks: int, progress: Progress) -> dict[str, Series]:
    app = server.server.config.app
    keyed = app.state.access
    open_access = keyed_access(keys.with_name("no-keys.json"), limits)
    arms = {"on": Series("keys + token + limits"), "off": Series("no keys (limits by address)")}
    body = TokenRequest(limits=token_limits).model_dump(exclude_none=True)
    task = progress.add_task("end to end, alternating sessions", total=blocks * 2)
    async with httpx.AsyncClient(base_url=server.url) as http:
        for block in range(blocks):
            for arm in ("on", "off") if block % 2 == 0 else ("off", "on"):
                credential = None
                if arm == "on":
                    minted = await http.post("/v1/tokens", json=body, headers={"Authorization": f"Bearer {key}"})
                    minted.raise_for_status()
                    credential = minted.json()["token"]
                app.state.access = keyed if arm == "on" else open_access
                series = await session_frames(server.ws_url, credential, max(1, frames // blocks), arms[arm].name)
                arms[arm].ms.extend(series.ms)
                progress.advance(task)
    app.state.access = keyed
    refused = sum(sample.value for access in (keyed, open_access) for metric in access.limited.collect()
                  for sample in metric.samples if sample.name.endswith("_total"))
    assert refused == 0, f"{refused} inputs refused by a limit end to end"
    return arms


def tiny_model(folder: Path) -> ModelConfig:
    from livegen.models.tiny import build_tiny_pipeline

    return ModelConfig(source=str(build_tiny_pipeline(folder / "tiny-sd")), name="tiny", sizes=[(64, 64)])


def verdicts(r: dict) -> dict[str, bool]:
    """Each access arm's added cost per input at p50 against the target, and a valid run (nothing refused)."""
    return {**{arm: r["added_ms"][arm] <= r["target_ms"] for arm in ARMS[1:]},
            "nothing refused": sum(r["refused"].values()) == 0}


def run(config: ModelConfig | None, frames: int, seconds: float, output: Path, quick: bool = False) -> dict:
    """`config` None: a tiny random pipeline (quick mode's smoke test)."""
    plan = QUICK if quick else {"baseline_s": 5.0, "fill_s": None, "blocks": BLOCKS, "setup_repeats": 1000,
                                "held": WINDOW_HELD}
    limits, token_limits = roomy_limits()
    fill_s = plan["fill_s"] if plan["fill_s"] is not None else parse(limits.pixels_per_key).get_expiry()
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
            window = window_costs(limits, width * height, plan["held"])
            arms = message_arms(server.engine, keys.path, key, limits, token_limits)
            cpu = per_message(arms, seconds, fill_s, plan["baseline_s"], progress)
            messages = {arm.name: micro(arm.series) for arm in arms}
            medians = {arm.name: statistics.median(arm.series.ms) for arm in arms}
            refused = {arm.name: arm.refused for arm in arms}
            del arms  # their windows (a list entry per pixel) go now, not at the end
            path = asyncio.run(end_to_end(server, key, limits, token_limits, keys.path, frames, plan["blocks"],
                                          progress))
        finally:
            server.stop()
    on, off = (statistics.median(path[arm].ms) for arm in ("on", "off"))
    results = {
        **header("access"), "model": config.display_name, "size": f"{width}x{height}", "quick": quick,
        "target_ms": TARGET_MS, "rate_hz": RATE_HZ, "fill_s": fill_s, "seconds": seconds,
        "limits": {"server": limits.model_dump(include={"inputs_per_session", "pixels_per_key"}),
                   "token": token_limits.model_dump(exclude_none=True)},
        "per_message": messages, "refused": refused,
        "added_ms": {arm: round(medians[arm] - medians[ARMS[0]], 4) for arm in ARMS[1:]},
        "cpu_outside_steps_ms_per_s": cpu, "window": window, "session_setup": setup,
        "end_to_end": {arm: series.summary() for arm, series in path.items()},
        "end_to_end_difference_ms": round(on - off, 3), "end_to_end_ratio": round(on / off, 4),
    }
    results["verdicts"] = verdicts(results)
    results["passed"] = all(results["verdicts"].values())
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    verdict = {True: "met", False: "missed"}
    held = r["window"]
    lines = [f"Access control on the {r['model']} model, {r['size']}; {machine_line(r['machine'])}"
             + (" (quick mode: a smoke test, not figures)." if r["quick"] else "."), "",
             "| per `generate` input, before the engine sees it | p50 | p99 | added at p50 |", "|---|---|---|---|"]
    for arm, m in r["per_message"].items():
        added = f"{r['added_ms'][arm] * 1000:+.1f} us ({r['added_ms'][arm]:+.4f} ms)" if arm in r["added_ms"] else "-"
        lines.append(f"| {arm} | {m['p50_us']} us | {m['p99_us']} us | {added} |")
    lines += ["", f"- target, at most {r['target_ms']} ms added per input at p50: "
                  f"**{'passed' if r['passed'] else 'failed'}** ("
                  + "; ".join(f"{name}: {verdict[met]}" for name, met in r["verdicts"].items()) + ")",
              f"- {r['per_message'][ARMS[0]]['n']} inputs per arm at {r['rate_hz']} per second (a slider), after "
              f"{r['fill_s']:g} s of the same (the pixel window's length: each window holds what such a client "
              "keeps in it), one input per arm per tick in rotating order; inputs refused by a limit: "
              + ", ".join(f"{arm} {n}" for arm, n in r["refused"].items()),
              f"- limits: the server's default windows with amounts no input reaches ({r['limits']['server']}); "
              f"the token's own: {r['limits']['token']}",
              "- the spends come 33 ms apart, as a slider's do: the `limits` library's memory storage then "
              "starts a new expiry timer thread (threading.Timer, 10 ms) on the first spend of each input, "
              "inside the measured step; the window table's spends come back to back, its timer still running",
              f"- CPU time outside the measured steps (the `limits` library expires windows on a timer thread, "
              f"a pass after spends): {r['cpu_outside_steps_ms_per_s']['baseline_cpu_ms_per_s']} ms per second "
              f"with no spends, {r['cpu_outside_steps_ms_per_s']['measure_cpu_ms_per_s']} ms per second while "
              "both access arms spend", "",
              f"| one input's pixels spend ({r['size']}) when the key's window holds | that is, inputs/s at "
              f"{r['size']} | inputs/s at 512x512 | p50 | p99 |", "|---|---|---|---|---|"]
    lines += [f"| {row['pixels_held']:,} pixels | {row['inputs_per_s_at_this_size']} | "
              f"{row['inputs_per_s_at_512x512']} | {row['p50_us']} us | {row['p99_us']} us |" for row in held]
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
