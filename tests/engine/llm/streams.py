"""Driving an LLMEngine from a test: submit requests, read each one's token stream to its end."""

from __future__ import annotations

from mlserve.batching.llm_engine import LLMEngine
from mlserve.spec.generation import SamplingParams


async def run_each(engine: LLMEngine, requests: list[tuple[list[int], SamplingParams]]) -> list[list[int]]:
    """Start the engine, submit every (prompt, params) at once, return each one's tokens, stop it."""
    engine.start()
    try:
        handles = [engine.submit(prompt, params) for prompt, params in requests]
        results = []
        for handle in handles:
            tokens = []
            while True:
                event = await handle.queue.get()
                assert event.error is None, event.error
                tokens += event.token_ids
                if event.finish_reason is not None:
                    break
            results.append(tokens)
        return results
    finally:
        await engine.stop()
