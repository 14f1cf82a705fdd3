"""Settings: LIVEGEN_* environment variables, overridden by CLI flags."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Family = Literal["auto", "turbo", "lcm", "tcd", "flux"]
Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["auto", "float32", "float16", "bfloat16"]


def parse_size(text: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """'512x512' or '512' or (512, 512) -> (width, height), each a positive multiple of 8."""
    if isinstance(text, (tuple, list)):
        width, height = (int(v) for v in text)
    else:
        parts = str(text).lower().split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"size must look like 512x512, got {text!r}")
        width, height = int(parts[0]), int(parts[-1])
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise ValueError(f"size sides must be positive multiples of 8, got {width}x{height}")
    return width, height


class ModelDeployment(BaseModel):
    """On Ray Serve: the model in a Serve deployment of its own, with its own replicas and resources.
    The ingress replicas hold the sessions and form the batches; the model's replicas compute them."""

    replicas: int = Field(default=1, ge=1, description="Replicas of the model kept warm.")
    max_replicas: int | None = Field(default=None, ge=1, description="Above `replicas`, Serve autoscales the model "
                                     "on the batches in flight (one per replica as its target).")
    cpus: float = Field(default=1, ge=0, description="CPUs each of the model's replicas reserves.")
    gpus: float = Field(default=0, ge=0, description="GPUs each of the model's replicas reserves; a fraction shares one.")

    @model_validator(mode="after")
    def _ordered(self) -> ModelDeployment:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas})")
        return self


class ModelConfig(BaseModel):
    """One model the server keeps warm."""

    source: str = Field(description="Local diffusers folder, or a repo id already in the local HF cache.")
    name: str | None = Field(default=None, description="Name clients use; the folder name if absent.")
    family: Family = Field(default="auto", description="Sampler family; read from the folder if 'auto'.")
    device: Device = "auto"
    dtype: DType = Field(default="auto", description="float16 on CUDA, float32 elsewhere, if 'auto'.")
    compile: bool = Field(default=False, description="torch.compile the denoiser (CUDA).")
    cuda_graphs: bool = Field(default=True, description="On CUDA, replay the denoiser and the decoder as CUDA "
                              "graphs captured at warm-up (models/cuda_graphs.py); off with torch.compile.")
    tiny_vae: str | None = Field(default=None, description="AutoencoderTiny folder to decode with.")
    lora: str | None = Field(default=None, description="LoRA folder to fuse (LCM-LoRA, Hyper-SD LoRA).")
    sizes: list[tuple[int, int]] = Field(default_factory=lambda: [(512, 512)])
    guidance: float | None = Field(default=None, ge=0, description="Default guidance; the family's usual one if absent.")
    deployment: ModelDeployment | None = Field(default=None, description="On Ray Serve, a deployment of its own "
                                               "(ignored on one machine): its replicas need not hold every model.")

    @field_validator("sizes", mode="before")
    @classmethod
    def _sizes(cls, value: object) -> list[tuple[int, int]]:
        items = value.split(",") if isinstance(value, str) else value
        return [parse_size(item) for item in items]  # type: ignore[union-attr]

    @property
    def display_name(self) -> str:
        return self.name or Path(self.source.rstrip("/")).name


class SpeechConfig(BaseModel):
    """The speech models the server keeps warm beside the image models: an English voice (Piper) and
    Kokoro with its voices; text with kana goes to Kokoro's first voice, other text to `default_voice`."""

    english_voice: str | None = Field(default=None, description="Piper voice .onnx (its .onnx.json beside it) for "
                                                                "English text; the shipped en_US-joe-medium if absent.")
    model: str | None = Field(default=None, description="Kokoro ONNX file; the shipped Kokoro-82M int8 if absent.")
    voices: str | None = Field(default=None, description="Kokoro voices file (.bin/.npz) for `model`.")
    default_voice: str | None = Field(default=None, description="Voice for text without kana, from either model; "
                                                                "the English voice if absent.")
    language: str = Field(default="en-us", description="espeak-ng language of text without kana.")
    max_text_chars: int = Field(default=4000, ge=1, description="Longest utterance, all its pieces together.")


class SafetyConfig(BaseModel):
    """The checks every input and frame passes (docs/safety.md)."""

    moderation: bool = Field(default=True, description="Check prompts against the policy before any compute.")
    policy: Path | None = Field(default=None, description="Moderation policy (TOML); livegen's own if absent.")
    threshold: float | None = Field(default=None, gt=0, le=1,
                                    description="Similarity that blocks a prompt; the policy's if absent.")
    output_checker: str | None = Field(
        default=None, description="Safety checker folder or HF-cache repo id, or module:factory; none if absent.")
    speech_moderation: bool = Field(default=True, description="Check each phrase of a spoken reply against the "
                                                               "speech policy before it is synthesized.")
    speech_policy: Path | None = Field(default=None, description="Spoken replies' policy (TOML); livegen's own "
                                                                 "if absent.")
    watermark: bool = Field(default=True, description="An invisible watermark on every frame.")
    audio_watermark: bool = Field(default=True, description="An inaudible watermark on every chunk of speech: "
                                                            "the server tag and an utterance counter.")
    server_id: str = Field(default_factory=socket.gethostname, description="Named (as a tag) in every watermark, "
                                                                           "of frames and of speech.")
    keys: Path = Field(default=Path("~/.local/share/livegen/keys").expanduser(),
                       description="Signing chain, key and root for Content Credentials; "
                                   "a development chain is made there if it is empty.")


class LimitsConfig(BaseModel):
    """Per-client limits (docs/security.md). Rates are `limits` strings: "60/second", "10000 per 10 seconds"."""

    sessions_per_key: int = Field(default=64, ge=1, description="Open sessions one API key (or one address, "
                                                                 "without keys) may hold.")
    inputs_per_session: str = Field(default="120 per 2 seconds",
                                    description="Messages one session may send; a 30 Hz slider stays far below.")
    pixels_per_key: str = Field(default="400000000 per 10 seconds", description="Generated pixels per key.")
    speech_chars_per_key: str = Field(default="20000 per 10 seconds", description="Speech characters per key.")
    exports_per_key: str = Field(default="120/minute", description="Signed exports per key.")
    idle_seconds: float = Field(default=120.0, ge=0, description="A session that sends nothing (not even a "
                                                                "ping) for this long is closed; 0: never.")

    @field_validator("inputs_per_session", "pixels_per_key", "speech_chars_per_key", "exports_per_key")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse

        parse(value)  # a ValueError names what is wrong
        return value


class AccessConfig(BaseModel):
    """Who may use the server: API keys, browser tokens, origins (docs/security.md)."""

    keys_file: Path = Field(default=Path("~/.local/share/livegen/api-keys.json").expanduser(),
                            description="API keys, stored hashed (`livegen api-keys create`); re-read when it changes.")
    key_hashes: list[str] = Field(default_factory=list, description="More keys as `<id>:<sha256 hex>` "
                                  "(what `livegen api-keys create` prints), e.g. from a secret store.")
    insecure: bool = Field(default=False, description="Serve a non-loopback address without keys.")
    token_secret: str | None = Field(default=None, description="HMAC secret that signs browser tokens; random "
                                     "per process if absent (replicas behind one balancer must share one).")
    token_seconds: float = Field(default=600.0, gt=0, le=86400, description="Default lifetime of a browser token.")
    playground_tokens: bool = Field(default=True, description="The playground, opened from this machine, gets "
                                    "tokens without a key; turn off behind a reverse proxy on the same host.")
    allowed_origins: list[str] = Field(default_factory=list, description="Origins (besides this server's own "
                                       "and loopback) whose pages may open sessions; '*' for any.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed cross-origin HTTP "
                                    "calls (CORS); none if empty.")
    allowed_hosts: list[str] | None = Field(default=None, description="Host headers served (DNS-rebinding "
                                            "guard): loopback names when bound to loopback, any otherwise, if absent.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)


def embedded_model() -> ModelConfig:
    from livegen.models.embedded import EMBEDDED_MODEL, GUIDANCE, IMAGE_SIZE

    return ModelConfig(source=str(EMBEDDED_MODEL), name="emoji", sizes=[(IMAGE_SIZE, IMAGE_SIZE)], guidance=GUIDANCE)


class RayConfig(BaseModel):
    """Replicas on Ray Serve: `livegen serve --ray`, `livegen ray config` (docs/deploying.md)."""

    address: str | None = Field(default=None, description="A Ray cluster to join (`auto`, `ray://...`); "
                                                          "a local one is started if absent.")
    ingress: Literal["haproxy", "proxy"] = Field(
        default="haproxy", description="What takes the clients' connections: `haproxy`, Serve's HAProxy in "
        "front of each replica's own HTTP server (frames skip Python between client and replica), or `proxy`, "
        "Serve's Python proxy actor. Ray reads it when a cluster starts (`cluster_env`).")
    min_replicas: int = Field(default=1, ge=0, description="Replicas kept warm. 0 lets Serve scale to zero, "
                                                          "which brings back the cold start.")
    max_replicas: int = Field(default=1, ge=1, description="Most replicas the autoscaler starts.")
    target_sessions: float = Field(default=16, gt=0, description="Open sessions per replica the autoscaler "
                                                                 "aims for (Serve's target_ongoing_requests).")
    autoscaling: dict[str, float] = Field(default_factory=dict, description="More of Serve's autoscaling_config "
                                          "when max_replicas exceeds min_replicas, as Serve names them: "
                                          "upscale_delay_s, downscale_delay_s, look_back_period_s, ...")
    cpus: float = Field(default=1, ge=0, description="CPUs each replica reserves.")
    gpus: float = Field(default=0, ge=0, description="GPUs each replica reserves; a fraction shares one.")
    health_check_period_s: float = Field(default=5, gt=0)
    graceful_shutdown_s: float = Field(default=20, gt=0, description="How long Serve waits for a stopped "
                                                                     "replica's sessions before killing it.")
    drain_poll_s: float = Field(default=0.25, gt=0, description="How often a replica asks Serve whether it "
                                                                "is being stopped, to drain its sessions.")

    @model_validator(mode="after")
    def _ordered(self) -> RayConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class Settings(BaseSettings):
    """Server settings. Every field is also a LIVEGEN_<NAME> environment variable."""

    model_config = SettingsConfigDict(env_prefix="LIVEGEN_", env_nested_delimiter="__")

    host: str = "127.0.0.1"
    port: int = 8000
    models: list[ModelConfig] = Field(
        default_factory=lambda: [embedded_model()], description="Models to keep warm; livegen's own if absent."
    )

    speech: SpeechConfig | None = Field(
        default_factory=SpeechConfig, description="The speech model; null serves images only.")

    safety: SafetyConfig = Field(default_factory=SafetyConfig)

    access: AccessConfig = Field(default_factory=AccessConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    max_batch: int = Field(default=8, ge=1, le=64, description="Most inputs in one forward pass.")
    batch_wait_ms: float = Field(
        default=4.0, ge=0, le=100, description="Longest an input waits for others to join its batch."
    )
    cpu_turns: bool = Field(
        default=True, description="Runners computing on the CPU take turns, first come first served, "
                                  "instead of running at once on the same cores.")
    prompt_cache_size: int = Field(default=256, ge=1)
    warmup_runs: int = Field(default=2, ge=1, description="Warm-up generations per served size.")
    max_sessions: int = Field(default=64, ge=1)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_prompt_chars: int = Field(default=1000, ge=1)
    deadline_s: float | None = Field(
        default=None, gt=0, description="A batch or speech piece computing longer than this is answered `timeout` "
                                        "and its model reported unready until it returns; 10x the slowest "
                                        "warm-up, at least 5 s, if absent.")
    worker_threads: int = Field(default=2, ge=1, description="Threads for input decoding, the similarity "
                                                             "filter, phonemes and signing, off the event loop.")
    loop_stall_seconds: float = Field(
        default=30.0, ge=0, description="The process exits (logging every thread's stack) when its event loop has "
                                        "not run for this long, so that an orchestrator restarts it; 0: never.")
    drain_seconds: float = Field(default=10.0, ge=0, description="On SIGTERM: how long running work may take "
                                                                 "to finish before sockets close.")
