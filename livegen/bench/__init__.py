"""Latency scenarios: livegen against the baselines people would use instead."""
