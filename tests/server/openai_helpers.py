"""Shared pieces of the OpenAI end-to-end tests: clients, metric reads, the reference tokenizer."""

from __future__ import annotations

import time
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families


def client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120, **kwargs)


def metric(server, name: str, model: str) -> float:
    """Sum of one sample name's values for one model (all versions)."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("model") == model:
                total += sample.value
    return total


def wait_for_idle(server, model: str, timeout: float = 30.0) -> None:
    """Until no sequence runs or waits and no KV block is held."""
    deadline = time.monotonic() + timeout
    names = ("mlserve_llm_running_sequences", "mlserve_llm_waiting_sequences", "mlserve_llm_kv_blocks_used")
    while time.monotonic() < deadline:
        if all(metric(server, n, model) == 0 for n in names):
            return
        time.sleep(0.1)
    raise AssertionError(f"{model} still busy: " + ", ".join(f"{n}={metric(server, n, model)}" for n in names))
