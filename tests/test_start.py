"""What a start keeps in the cache folder and reads back, and what it leaves for later (issue 23's cold start)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import torch

from livegen import cache
from livegen.config import ModelConfig, Settings, SpeechConfig
from livegen.engine.image_runner import ImageRunner
from livegen.engine.metrics import EngineMetrics
from livegen.engine.speech_runner import SPEEDS, SpeechRunner, kept_speeds
from livegen.engine.workers import Workers
from livegen.models import speech
from livegen.models.base import ModelError
from livegen.models.onnx_session import open_session
from livegen.models.piper import PiperModel
from livegen.models.voice import open_halves

SENTENCE = "The kept halves speak as the cut ones do."


@pytest.fixture
def cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEGEN_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_the_server_leaves_slow_imports_to_its_model_threads():
    """Importing the app and settling its settings must not import diffusers, transformers or scipy
    (seconds in all): the engine does, on its image and speech threads, which run side by side."""
    code = ("import sys; from livegen.config import Settings; import livegen.server.app, livegen.cli; "
            "from livegen.models.sources import resolve_source; resolve_source(Settings().models[0].source); "
            "print(sorted(m for m in ('diffusers', 'transformers', 'scipy') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_speech_loads_and_marks_its_audio_without_scipy():
    """scipy.signal took a start 0.8 s to import (scipy.stats and its docstrings with it): the voices
    resample with soxr, the audio watermark marks with numpy; only its reader imports scipy."""
    code = ("import sys, numpy as np; from livegen.models.piper import PiperModel; "
            "from livegen.models.speech import SpeechModel; from livegen.safety.audio_watermark import AudioWatermarker; "
            "PiperModel().synthesize('Hello.'); AudioWatermarker('id', 24000).utterance(0).mark(np.ones(2400)); "
            "print('scipy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_halves_are_cut_once_kept_and_a_damaged_copy_cut_again(cache_folder):
    cuts = []

    def cut():
        cuts.append(1)
        return b"text", b"decoder"

    def opened(halves):
        graphs = halves and tuple(half() for half in halves)
        if graphs and graphs[0] != b"text":
            raise ValueError("not a graph")
        return graphs

    assert open_halves("model", cut, opened) == (b"text", b"decoder") == open_halves("model", cut, opened)
    assert len(cuts) == 1
    (cache_folder / "speech" / "model.text.onnx").write_bytes(b"damaged")
    assert open_halves("model", cut, opened) == (b"text", b"decoder") and len(cuts) == 2
    assert (cache_folder / "speech" / "model.text.onnx").read_bytes() == b"text"
    uncut = []
    assert open_halves("whole", lambda: uncut.append(1), lambda halves: halves) is None
    assert open_halves("whole", lambda: uncut.append(1), lambda halves: halves) is None and len(uncut) == 2


def test_voices_opened_from_kept_halves_speak_as_freshly_cut_ones(cache_folder, monkeypatch):
    piper = PiperModel().synthesize(SENTENCE)
    kokoro = speech.SpeechModel().synthesize(SENTENCE)
    assert len(list((cache_folder / "speech").iterdir())) == 4
    assert len(list((cache_folder / "onnx-optimized").iterdir())) == 4  # opened below with the optimizers off

    def reassembled():
        raise AssertionError("the shipped Kokoro model was reassembled and hashed again")

    monkeypatch.setattr(speech, "default_model_bytes", reassembled)
    read, read_entry = [], cache.read
    monkeypatch.setattr(cache, "read", lambda name: read.append(name) or read_entry(name))
    np.testing.assert_array_equal(PiperModel().synthesize(SENTENCE), piper)
    np.testing.assert_array_equal(speech.SpeechModel().synthesize(SENTENCE), kokoro)
    assert read == []  # the halves unread: their optimized graphs open from their files


def _small_graph() -> bytes:
    """A convolution and what onnxruntime fuses into it."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_session_keeps_its_optimized_graph_and_a_damaged_copy_is_optimized_again(cache_folder, monkeypatch, caplog):
    graph, x = _small_graph(), {"x": np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    session = open_session(lambda: graph, "small")
    (first,) = session.run(None, x)
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    (kept,) = list((cache_folder / "onnx-optimized").iterdir())

    def unread():
        pytest.fail("the graph was read, though its optimized copy is kept")

    with monkeypatch.context() as patched:
        patched.setattr(cache, "keep", lambda *_: pytest.fail("optimized again"))
        np.testing.assert_array_equal(open_session(unread, "small", threads=1).run(None, x)[0], first)
    kept.write_bytes(b"damaged")
    np.testing.assert_array_equal(open_session(lambda: graph, "small").run(None, x)[0], first)
    assert "did not open; optimizing it again" in caplog.text and kept.read_bytes() != b"damaged"
    open_session(lambda: graph, "another name")  # a graph's entry is its name's
    assert len(list((cache_folder / "onnx-optimized").iterdir())) == 2


def test_a_session_opens_with_no_temporary_folder_to_write_in(cache_folder, tmp_path, monkeypatch):
    import tempfile

    (tmp_path / "a file").write_bytes(b"")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "a file" / "no folder"))  # as a read-only file system
    graph, x = _small_graph(), {"x": np.ones((1, 3, 16, 16), np.float32)}
    assert open_session(lambda: graph, "small").run(None, x)[0].shape == (1, 8, 16, 16)
    assert not (cache_folder / "onnx-optimized").exists()


def test_speech_speeds_are_timed_once_then_read_back(cache_folder):
    def runner() -> SpeechRunner:
        made = SpeechRunner(SpeechConfig(), Settings(models=[]), EngineMetrics(), Workers(1))
        made.settings.safety.speech_moderation = False
        return made

    first = runner()
    first.timing_alone.set()  # nothing else warms up
    first.load_and_warm()
    timed = {model.name: speed for model, speed in first.speeds.items()}
    assert set(timed) == {"en_US-joe-medium", "kokoro-82m-int8"} and all(s.frame_s > 0 for s in timed.values())
    assert (cache_folder / SPEEDS).is_file()

    second = runner()  # its timing_alone is never set: a start that had to time would wait for it
    loading = threading.Thread(target=second.load_and_warm, daemon=True)
    loading.start()
    loading.join(timeout=120)
    assert not loading.is_alive(), "the second start timed the speeds again instead of reading them"
    assert {model.name: speed for model, speed in second.speeds.items()} == timed


@pytest.mark.parametrize("kept", [b"not json", b"[1, 2]", b'{"a model": {"piece_s": 1}}'])
def test_unreadable_kept_speeds_are_timed_again_not_a_failed_start(cache_folder, kept):
    (cache_folder / SPEEDS).write_bytes(kept)
    assert kept_speeds() == {}


def test_threads_keeping_the_same_entry_at_once_leave_one_whole_copy(cache_folder, caplog):
    data = [bytes([i]) * 20_000_000 for i in range(8)]
    keepers = [threading.Thread(target=cache.keep, args=("onnx-optimized/same.onnx", d)) for d in data]
    for keeper in keepers:
        keeper.start()
    for keeper in keepers:
        keeper.join()
    assert cache.read("onnx-optimized/same.onnx") in data and "could not keep" not in caplog.text
    assert [p.name for p in (cache_folder / "onnx-optimized").iterdir()] == ["same.onnx"]


def test_an_unwritable_cache_folder_costs_only_the_work_again(tmp_path, monkeypatch, caplog):
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    monkeypatch.setenv("LIVEGEN_CACHE_DIR", str(blocked))
    cache.keep("speech/x.onnx", b"graph")
    assert cache.read("speech/x.onnx") is None and "could not keep speech/x.onnx" in caplog.text


def aged(path, days: float) -> None:
    then = time.time() - days * 86400
    os.utime(path, (then, then))


def test_reading_an_entry_marks_it_used(cache_folder):
    cache.keep("words/english-x.txt", b"word")
    aged(cache_folder / "words/english-x.txt", cache.KEPT_DAYS + 1)
    assert cache.read("words/english-x.txt") == b"word"
    assert time.time() - (cache_folder / "words/english-x.txt").stat().st_mtime < 60
    aged(cache_folder / "words/english-x.txt", cache.KEPT_DAYS + 1)
    assert cache.use("words/english-x.txt") == cache_folder / "words/english-x.txt"
    assert time.time() - (cache_folder / "words/english-x.txt").stat().st_mtime < 60
    assert cache.use("words/none.txt") is None and cache.read("words/none.txt") is None


def test_prune_removes_what_no_start_used_for_the_kept_days_and_nothing_else(cache_folder):
    for name in ["onnx-optimized/old.onnx", "onnx-optimized/used.onnx", "packs/old/manifest.json", "packs/old/unet.pt",
                 "packs/used/manifest.json", "packs/used/unet.pt", "speech-speeds.json", "speech/x.text.onnx.partial"]:
        cache.keep(name, b"x")
    (cache_folder / "packs" / "empty").mkdir()
    for name in ["not-livegens.txt", "other/old.bin"]:  # a cache folder shared with other programs
        (cache_folder / name).parent.mkdir(exist_ok=True)
        (cache_folder / name).write_bytes(b"x")
    for path in cache_folder.rglob("*"):
        if path.is_file():
            aged(path, cache.KEPT_DAYS + 1)
    aged(cache_folder / "packs/used/unet.pt", cache.KEPT_DAYS - 1)  # a pack is as old as its newest file
    assert cache.read("onnx-optimized/used.onnx") == b"x"
    assert sorted(cache.prune()) == ["onnx-optimized/old.onnx", "packs/empty", "packs/old", "speech-speeds.json",
                                     "speech/x.text.onnx.partial"]
    left = sorted(p.relative_to(cache_folder).as_posix() for p in cache_folder.rglob("*") if p.is_file())
    assert left == ["not-livegens.txt", "onnx-optimized/used.onnx", "other/old.bin", "packs/used/manifest.json",
                    "packs/used/unet.pt"]
    assert cache.prune() == []


def test_prune_of_a_missing_unlistable_or_unwritable_cache_folder_removes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEGEN_CACHE_DIR", str(tmp_path / "none"))
    assert cache.prune() == []
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    monkeypatch.setenv("LIVEGEN_CACHE_DIR", str(blocked))
    assert cache.prune() == [] and blocked.is_file()
    monkeypatch.setenv("LIVEGEN_CACHE_DIR", str(tmp_path))
    cache.keep("packs/old/manifest.json", b"x")
    aged(tmp_path / "packs/old/manifest.json", cache.KEPT_DAYS + 1)
    monkeypatch.setattr(Path, "iterdir", lambda self: (_ for _ in ()).throw(PermissionError(13, "denied", str(self))))
    assert cache.prune() == [] and (tmp_path / "packs/old/manifest.json").is_file()


def warming_beside_speech(tiny_sd) -> tuple[ImageRunner, threading.Event, list[int]]:
    """An image runner (batches of one and two) to warm while speech is not yet warm, and the thread
    count each of its computations runs with, as they run."""
    if torch.get_num_threads() < 2:
        pytest.skip("one core: nothing to share")
    speech_warm = threading.Event()
    settings = Settings(models=[], max_batch=2, speech=None)
    runner = ImageRunner(ModelConfig(source=str(tiny_sd), sizes=[(64, 64)]), settings, EngineMetrics(),
                         iter(range(10**6)), speech_warm)
    seen: list[int] = []
    compute = runner._compute
    runner._compute = lambda tasks: (seen.append(torch.get_num_threads()), compute(tasks))[1]  # type: ignore
    return runner, speech_warm, seen


def test_an_image_model_warms_with_one_thread_while_speech_loads_then_its_single_frames_with_all(tiny_sd):
    """OpenMP's idle threads spin: two models warming on the same cores with them took longer than
    with one thread each. Once speech is warm, the single frames run again at the serving thread count."""
    runner, speech_warm, seen = warming_beside_speech(tiny_sd)
    threads = torch.get_num_threads()
    warming = threading.Thread(target=runner.load_and_warm, daemon=True)
    warming.start()
    deadline, counted = time.monotonic() + 60, -1
    while (not seen or len(seen) != counted) and time.monotonic() < deadline:  # until a second with none
        counted = len(seen)
        time.sleep(1)
    assert warming.is_alive(), "it did not wait for speech to be warm"
    shapes = len(seen)
    assert shapes > 0 and set(seen) == {1}
    speech_warm.set()
    warming.join(timeout=60)
    assert not warming.is_alive()
    single = runner.settings.warmup_runs * sum(batch == 1 for _, batch in runner.warm_shapes())  # computations
    assert 0 < single < shapes and seen[shapes:] == [threads] * single  # with the threads frames run with


def test_the_shapes_left_when_speech_is_warm_run_with_all_threads_and_only_once(tiny_sd):
    runner, speech_warm, seen = warming_beside_speech(tiny_sd)
    threads = torch.get_num_threads()
    record = runner._compute  # speech is warm from the first computation on
    runner._compute = lambda tasks: (speech_warm.set(), record(tasks))[1]  # type: ignore[method-assign]
    runner.load_and_warm()
    one_pass = sum(runner.settings.warmup_runs if batch == 1 else 1 for _, batch in runner.warm_shapes())
    assert seen[0] == 1 and seen[1:] == [threads] * (one_pass - 1)


def test_speech_lets_the_image_models_go_on_when_it_fails_to_load(tmp_path):
    runner = SpeechRunner(SpeechConfig(model=str(tmp_path / "missing.onnx")), Settings(models=[]), EngineMetrics(),
                          Workers(1))
    with pytest.raises(ModelError, match="no Kokoro ONNX model"):
        runner.load_and_warm()
    assert runner.warmed_up.is_set()
