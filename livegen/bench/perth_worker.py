"""Resemble AI's Perth, measured for `livegen bench audio-watermark --perth VENV`: run in Perth's own
virtual environment (torchaudio and librosa, which livegen does not use), so it must not import livegen.

    python perth_worker.py embed HOSTS.npz OUT.npz   # mark each reply whole and in 100 ms chunks, timed
    python perth_worker.py detect AUDIO.npz OUT.json  # Perth's detection score for each array

HOSTS.npz holds `rate` and the replies `host0`, `host1`, ...; OUT.npz gets `whole0`, `chunked0`, ...
and `timings` (JSON: load seconds, each reply's whole-embedding ms, each chunk's ms). AUDIO.npz holds
arrays named `<name>` and their rates as `<name>.rate`; OUT.json maps each name to its score in [0, 1].
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
import torch

CHUNK_MS = 100


def watermarker():
    warnings.filterwarnings("ignore")
    import perth

    torch.set_num_threads(2)
    return perth.PerthImplicitWatermarker(device="cpu")


def embed(hosts_path: str, out_path: str) -> None:
    hosts = np.load(hosts_path)
    rate = int(hosts["rate"])
    started = time.perf_counter()
    perth = watermarker()
    timings = {"load_s": time.perf_counter() - started, "whole_ms": [], "chunk_ms": [], "seconds": []}
    perth.apply_watermark(hosts["host0"][:rate], sample_rate=rate)  # warm
    out = {}
    step = rate * CHUNK_MS // 1000
    for i in range(sum(name.startswith("host") for name in hosts.files)):
        host = hosts[f"host{i}"]
        started = time.perf_counter()
        out[f"whole{i}"] = perth.apply_watermark(host, sample_rate=rate).astype(np.float32)
        timings["whole_ms"].append((time.perf_counter() - started) * 1000)
        timings["seconds"].append(len(host) / rate)
        # As the stream would call it: one 100 ms chunk at a time. Perth's STFT (2048 samples at
        # 32 kHz, reflect-padded) refuses a chunk under 1024 samples there, so a short tail joins
        # the chunk before it.
        bounds = list(range(0, len(host), step)) + [len(host)]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < step // 2:
            del bounds[-2]
        pieces = []
        for begin, end in zip(bounds, bounds[1:]):
            started = time.perf_counter()
            pieces.append(perth.apply_watermark(host[begin:end], sample_rate=rate))
            timings["chunk_ms"].append((time.perf_counter() - started) * 1000)
        out[f"chunked{i}"] = np.concatenate(pieces).astype(np.float32)
    np.savez(out_path, timings=json.dumps(timings), **out)


def detect(audio_path: str, out_path: str) -> None:
    audio = np.load(audio_path)
    perth = watermarker()
    scores = {}
    for name in audio.files:
        if not name.endswith(".rate"):
            score = perth.get_watermark(audio[name], sample_rate=int(audio[f"{name}.rate"]), round=False)
            scores[name] = float(np.mean(score))
    with open(out_path, "w") as out:
        json.dump(scores, out)


if __name__ == "__main__":
    command, source, target = sys.argv[1:4]
    {"embed": embed, "detect": detect}[command](source, target)
