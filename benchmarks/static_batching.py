"""The static-batching side of the generation benchmark: Hugging Face `generate` behind the same
streaming interface the benchmark client uses for mlserve. Requests queue on arrival; when the model is
free, up to `batch_size` waiting requests form one left-padded batch that decodes until its longest
request is done; each row's tokens are handed to its client as the step that made them ends."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator


@dataclass(slots=True)
class _Pending:
    prompt: list[int]
    max_tokens: int
    queue: asyncio.Queue


class StaticBatchServer:
    """One model, one worker thread, static batches; KV slot-steps counted from the cache's geometry
    (a dense cache is batch x (longest prompt + tokens so far) slots at every step)."""

    def __init__(self, model, batch_size: int, pad_id: int, max_delay_s: float = 0.05) -> None:
        self._model, self._batch_size, self._pad, self._max_delay_s = model, batch_size, pad_id, max_delay_s
        self._waiting: list[_Pending] = []
        self._arrived: asyncio.Event | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="static-generate")
        self._task: asyncio.Task | None = None
        self.kv_slot_steps_allocated = 0
        self.kv_slot_steps_used = 0

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        self._task.cancel()
        self._pool.shutdown()

    async def stream(self, prompt: list[int], max_tokens: int) -> AsyncIterator[int]:
        pending = _Pending(prompt, max_tokens, asyncio.Queue())
        self._waiting.append(pending)
        self._arrived.set()
        for _ in range(max_tokens):
            yield await pending.queue.get()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            first_seen = time.perf_counter()
            while len(self._waiting) < self._batch_size and time.perf_counter() - first_seen < self._max_delay_s:
                await asyncio.sleep(0.002)
            batch, self._waiting = self._waiting[: self._batch_size], self._waiting[self._batch_size:]
            await loop.run_in_executor(self._pool, self._generate, batch, loop)

    def _generate(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        import torch
        from transformers.generation.streamers import BaseStreamer

        longest, new = max(len(p.prompt) for p in batch), max(p.max_tokens for p in batch)
        ids = torch.full((len(batch), longest), self._pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(batch):
            ids[row, longest - len(p.prompt):] = torch.tensor(p.prompt)
            mask[row, longest - len(p.prompt):] = 1
        server = self

        class _Steps(BaseStreamer):
            step = -1  # the first put() is the prompt

            def put(self, value) -> None:
                self.step += 1
                if self.step == 0:
                    return
                server.kv_slot_steps_allocated += len(batch) * (longest + self.step)
                server.kv_slot_steps_used += sum(len(p.prompt) + min(self.step, p.max_tokens) for p in batch)
                for p, token in zip(batch, value.reshape(-1).tolist()):
                    if self.step <= p.max_tokens:
                        loop.call_soon_threadsafe(p.queue.put_nowait, token)

            def end(self) -> None:
                pass

        ids, mask = ids.to(self._model.device), mask.to(self._model.device)
        with torch.no_grad():
            self._model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=self._pad, eos_token_id=None, streamer=_Steps())


__all__ = ["StaticBatchServer"]
