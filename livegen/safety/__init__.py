"""Stages the engine runs on every request and frame: moderation, watermark, provenance."""
