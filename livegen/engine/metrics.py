"""Prometheus metrics the engine records; the server only exposes them at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Frame latencies from ~1 ms (GPU) to seconds (CPU, many steps).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.time_to_frame = Histogram(
            "livegen_time_to_frame_seconds", "Input received to frame ready, per frame.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram(
            "livegen_stage_seconds", "Time per stage, per frame.",
            ["model", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "livegen_batch_size", "Inputs per forward pass.", ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=r)
        self.queue_depth = Gauge("livegen_queue_depth", "Inputs waiting for a runner.", ["model"], registry=r)
        self.frames = Counter("livegen_frames_total", "Frames delivered.", ["model"], registry=r)
        self.superseded = Counter("livegen_superseded_total", "Inputs replaced by a newer one.", registry=r)
        self.skipped = Counter("livegen_skipped_total",
                               "Image inputs answered by the last frame: the similarity filter.", registry=r)
        self.blocked = Counter("livegen_blocked_total", "Inputs stopped by safety: prompt moderation or "
                               "the output check.", ["stage", "category"], registry=r)
        self.errors = Counter("livegen_errors_total", "Inputs and messages answered with an error.",
                              ["code"], registry=r)
        self.cancelled = Counter("livegen_cancelled_total", "Inputs stopped because their client left.",
                                 ["model"], registry=r)
        self.sessions = Gauge("livegen_sessions", "Open sessions.", registry=r)
        self.prompt_cache = Counter("livegen_prompt_cache_total", "Prompt embedding lookups.",
                                    ["model", "result"], registry=r)
        self.speech_ttfa = Histogram(
            "livegen_speech_ttfa_seconds", "First text of an utterance to its first audio chunk.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.speech_seconds = Counter("livegen_speech_audio_seconds_total", "Audio sent, in seconds.", registry=r)
        self.speech_cancelled = Counter("livegen_speech_cancelled_total",
                                        "Utterances stopped by a cancel or a newer utterance.", registry=r)
        self.runner_restarts = Counter("livegen_runner_restarts_total", "Runner loops restarted by their "
                                       "supervisor after dying.", ["runner"], registry=r)
        self.loop_lag = Histogram(
            "livegen_event_loop_lag_seconds", "How late the event loop ran a 50 ms heartbeat: what every "
            "socket's reads and writes wait.", buckets=LATENCY_BUCKETS, registry=r)
        self.ready = Gauge("livegen_ready", "1 once every model is loaded and warm.", registry=r)
