"""The engine in-process: warm start, latest-wins slots, batching, caches, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from livegen.config import ModelConfig, Settings
from livegen.engine import Engine, EngineBusy, image_runner
from livegen.models.base import BatchSpec
from livegen.protocol import Frame, Generate


def settings_for(model, **overrides) -> Settings:
    """These tests compare pictures pixel for pixel: without the watermark, whose frame counter
    makes each frame differ a little (tests/test_safety.py has it on)."""
    values = dict(warmup_runs=1, max_batch=4, batch_wait_ms=30, speech=None,
                  safety=Settings().safety.model_copy(update={"watermark": False}))
    values.update(overrides)
    return Settings(models=[ModelConfig(source=str(model), name="tiny", sizes=["64x64", "128x128"])], **values)


@pytest.fixture
async def engine(tiny_sd):
    engine = Engine(settings_for(tiny_sd))
    await engine.start()
    yield engine
    await engine.stop()


async def test_inputs_before_ready_are_answered_not_ready(tiny_sd):
    engine = Engine(settings_for(tiny_sd))
    session = engine.open_session()
    await engine.submit(session, Generate(id="early", prompt="a cat"))
    outcome = await session.next_outcome()
    assert (outcome.type, outcome.id, outcome.code) == ("error", "early", "not_ready")


async def test_ready_only_after_warm_up_ran_at_every_served_size(tiny_sd):
    engine = Engine(settings_for(tiny_sd))
    runner = engine.runners["tiny"]
    assert not engine.ready
    await engine.start()
    try:
        assert engine.ready
        assert runner.encode_prompt.cache_info().misses > 0
        for size in [(64, 64), (128, 128)]:  # the warm-up drew noise at every served size
            hits = runner.make_noise.cache_info().hits
            runner.make_noise(*size, 0)
            assert runner.make_noise.cache_info().hits == hits + 1
    finally:
        await engine.stop()


async def test_unchanged_prompt_is_encoded_once(engine):
    runner = engine.runners["tiny"]
    session = engine.open_session()
    misses = runner.encode_prompt.cache_info().misses
    for i in range(3):
        await engine.submit(session, Generate(id=str(i), prompt="a brand new prompt"))
        frame = await session.next_outcome()
        assert frame.type == "frame"
    assert runner.encode_prompt.cache_info().misses == misses + 1
    assert frame.timings["text_encode_ms"] < 5


async def test_every_frame_carries_per_stage_timings(engine):
    session = engine.open_session()
    await engine.submit(session, Generate(id="t", prompt="a cat"))
    frame = await session.next_outcome()
    assert {"queue_ms", "text_encode_ms", "denoise_ms", "decode_ms", "wire_encode_ms", "total_ms"} <= set(frame.timings)
    await engine.submit(session, Generate(id="i", prompt="a cat", image=frame.image, strength=0.6))
    edited = await session.next_outcome()
    assert "image_encode_ms" in edited.timings
    assert edited.timings["total_ms"] >= edited.timings["denoise_ms"]


async def test_session_keeps_its_noise_so_only_the_changed_setting_moves_the_picture(engine):
    session = engine.open_session()
    pictures = []
    for i in range(2):
        await engine.submit(session, Generate(id=str(i), prompt="a cat", format="png"))
        pictures.append(await session.next_outcome())
    assert pictures[0].seed == pictures[1].seed == session.seed
    assert pictures[0].image == pictures[1].image
    other = engine.open_session()
    await engine.submit(other, Generate(id="o", prompt="a cat", format="png"))
    assert (await other.next_outcome()).image != pictures[0].image


async def test_newer_input_supersedes_the_waiting_one(engine):
    session = engine.open_session()
    for i in range(20):
        await engine.submit(session, Generate(id=str(i), prompt=f"prompt {i}"))
    outcomes = [await session.next_outcome() for _ in range(20)]
    assert [o.id for o in outcomes if o.type == "frame"] == ["19"]
    superseded = {o.id: o.by for o in outcomes if o.type == "superseded"}
    assert set(superseded) == {str(i) for i in range(19)}
    assert superseded["18"] == "19"


async def test_sessions_with_the_same_settings_share_a_batch(tiny_sd, monkeypatch):
    """A long window (1 s; past what settings accept, so set without validation), and the sessions
    counted as active however long their priming took: the batch waits for all three, and leaves as
    soon as they are in, so arrival times cannot split it."""
    monkeypatch.setattr(image_runner, "ACTIVE_WINDOW_S", 60.0)
    engine = Engine(settings_for(tiny_sd).model_copy(update={"batch_wait_ms": 1000}))
    await engine.start()
    try:
        await share_a_batch(engine)
    finally:
        await engine.stop()


async def share_a_batch(engine):
    sessions = [engine.open_session() for _ in range(3)]
    for i, session in enumerate(sessions):
        await engine.submit(session, Generate(id=f"prime{i}", prompt="prime"))
    for session in sessions:
        await session.next_outcome()
    for i, session in enumerate(sessions):
        await engine.submit(session, Generate(id=f"s{i}", prompt=f"prompt {i}"))
    frames = [await session.next_outcome() for session in sessions]
    assert [f.batch_size for f in frames] == [3, 3, 3]


async def test_different_sizes_never_share_a_batch(engine):
    a, b = engine.open_session(), engine.open_session()
    await engine.submit(a, Generate(id="a", prompt="x", width=64, height=64))
    await engine.submit(b, Generate(id="b", prompt="x", width=128, height=128))
    frames = [await a.next_outcome(), await b.next_outcome()]
    assert [(f.width, f.batch_size) for f in frames] == [(64, 1), (128, 1)]


async def test_batch_never_exceeds_max_batch(tiny_sd):
    engine = Engine(settings_for(tiny_sd, max_batch=2))
    await engine.start()
    try:
        sessions = [engine.open_session() for _ in range(5)]
        for i, session in enumerate(sessions):
            await engine.submit(session, Generate(id=str(i), prompt="x"))
        frames = [await session.next_outcome() for session in sessions]
        assert max(f.batch_size for f in frames) == 2
    finally:
        await engine.stop()


async def test_closing_a_session_stops_its_running_batch(engine):
    runner = engine.runners["tiny"]
    session = engine.open_session()
    await engine.submit(session, Generate(id="long", prompt="x", width=128, height=128, steps=8, guidance=3.0))
    while session.running is None:
        await asyncio.sleep(0.001)
    engine.close_session(session)
    cancelled = engine.metrics.cancelled.labels("tiny")
    for _ in range(500):
        if cancelled._value.get() >= 1:
            break
        await asyncio.sleep(0.01)
    assert cancelled._value.get() == 1
    # The runner goes on serving others.
    other = engine.open_session()
    await engine.submit(other, Generate(id="next", prompt="x"))
    assert isinstance(await other.next_outcome(), Frame)
    assert runner.ready


async def test_session_limit_is_enforced(tiny_sd):
    engine = Engine(settings_for(tiny_sd, max_sessions=2))
    engine.open_session()
    engine.open_session()
    with pytest.raises(EngineBusy, match="2 sessions"):
        engine.open_session()


async def test_a_session_that_is_not_read_stops_taking_inputs_until_drained(engine):
    from livegen.engine.session import OUTBOX_LIMIT

    session = engine.open_session()
    for i in range(OUTBOX_LIMIT):
        await engine.submit(session, Generate(id=str(i), prompt="x", model="absent"))  # each answered with an error
    waiting = asyncio.create_task(session.wait_for_room())
    await asyncio.sleep(0.05)
    assert not waiting.done(), "a full outbox must hold the next read back"
    outcome = await session.next_outcome()
    assert outcome.code == "unknown_model"
    await asyncio.wait_for(waiting, 1)


async def test_blend_interpolates_between_the_two_prompts(engine):
    session = engine.open_session()

    async def picture(**fields) -> bytes:
        await engine.submit(session, Generate(id="b", prompt="a red fox", format="png", **fields))
        return (await session.next_outcome()).image

    fox = await picture()
    assert await picture(blend_prompt="a white owl", blend=0.0) == fox
    halfway = await picture(blend_prompt="a white owl", blend=0.5)
    await engine.submit(session, Generate(id="o", prompt="a white owl", format="png"))
    owl = (await session.next_outcome()).image
    assert await picture(blend_prompt="a white owl", blend=1.0) == owl
    assert halfway not in (fox, owl)


def _camera_frame(shift: int = 0, noise: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    pixels = np.stack([(x * 4 + shift) % 256, (y * 4) % 256, ((x + y) * 2) % 256], -1).astype(np.int16)
    pixels += np.random.default_rng(shift + noise).integers(-noise, noise + 1, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_similarity_filter_skips_a_still_camera_frame_and_not_a_moving_one(engine):
    session = engine.open_session()

    async def send(id: str, image: bytes, **fields) -> None:
        fields.setdefault("similarity_filter", 0.98)
        await engine.submit(session, Generate(id=id, prompt="a fox", image=image, strength=0.5, **fields))

    await send("first", _camera_frame())
    assert (await session.next_outcome()).type == "frame"
    await send("still", _camera_frame(noise=3))  # sensor noise only
    skipped = await session.next_outcome()
    assert (skipped.type, skipped.id, skipped.frame) == ("skipped", "still", "first")
    assert 0.98 <= skipped.similarity < 1
    await send("moved", _camera_frame(shift=80))
    assert (await session.next_outcome()).type == "frame"
    await send("unfiltered", _camera_frame(shift=80), similarity_filter=None)
    assert (await session.next_outcome()).type == "frame"
    await send("new prompt", _camera_frame(shift=80), seed=5)  # same picture, other settings: must run
    assert (await session.next_outcome()).type == "frame"
    assert engine.metrics.skipped._value.get() == 1


async def test_warm_up_runs_every_shape_guidance_on_and_off_image_to_image_and_each_batch_size(tiny_sd, monkeypatch):
    from livegen.engine.image_runner import ImageRunner

    ran: set[tuple] = set()
    compute = ImageRunner._compute

    def spy(self, tasks):
        ran.add((tasks[0].spec, len(tasks)))
        return compute(self, tasks)

    monkeypatch.setattr(ImageRunner, "_compute", spy)
    engine = Engine(settings_for(tiny_sd))
    await engine.start()
    await engine.stop()
    guidances = {spec.guidance for spec, _ in ran}
    assert 0.0 in guidances and any(g > 1 for g in guidances), "classifier-free guidance off and on"
    for size in [(64, 64), (128, 128)]:
        for batch in range(1, 5):
            for strength in (0.5, None):
                for guidance in guidances:
                    assert (BatchSpec(*size, 1, guidance, strength), batch) in ran


def test_the_watchdog_measures_loop_lag_and_acts_when_the_loop_is_stuck():
    import time

    from livegen.engine.metrics import EngineMetrics
    from livegen.engine.watchdog import LoopWatchdog

    stalls: list[float] = []
    metrics = EngineMetrics()

    async def block_the_loop() -> None:
        watchdog = LoopWatchdog(metrics, stall_s=0.3, on_stall=stalls.append)
        watchdog.start()
        await asyncio.sleep(0.2)
        assert not stalls
        time.sleep(0.8)  # what a blocking call on the event loop does
        for _ in range(500):  # until the watchdog has reported the stall and observed the late beat
            if stalls and late_beats() > 0:
                break
            await asyncio.sleep(0.01)
        watchdog.stop()

    def late_beats() -> float:
        count = metrics.registry.get_sample_value("livegen_event_loop_lag_seconds_count") or 0
        return count - (metrics.registry.get_sample_value("livegen_event_loop_lag_seconds_bucket", {"le": "0.5"}) or 0)

    asyncio.run(block_the_loop())
    assert stalls and stalls[0] > 0.3
    lags = metrics.registry.get_sample_value("livegen_event_loop_lag_seconds_bucket", {"le": "0.5"})
    count = metrics.registry.get_sample_value("livegen_event_loop_lag_seconds_count")
    assert count >= 3 and lags < count, "the blocked beat is counted late"


async def test_the_similarity_filter_only_reuses_an_input_that_made_a_frame(engine):
    """A still camera is never told `skipped` in favour of an input that was blocked (or failed, or
    superseded): the filter compares with the input of the session's latest frame."""
    session = engine.open_session()
    still = _camera_frame()
    for id in ("blocked", "still blocked"):
        await engine.submit(session, Generate(id=id, prompt="explicit porn", image=still, similarity_filter=0.98))
        assert (await session.next_outcome()).type == "blocked"
    await engine.submit(session, Generate(id="shown", prompt="a fox", image=still, similarity_filter=0.98))
    assert (await session.next_outcome()).type == "frame"
    await engine.submit(session, Generate(id="again", prompt="a fox", image=still, similarity_filter=0.98))
    skipped = await session.next_outcome()
    assert (skipped.type, skipped.frame) == ("skipped", "shown")
