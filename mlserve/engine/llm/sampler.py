"""Greedy, temperature, top-k and top-p sampling, with a per-request generator for reproducible seeds."""

from __future__ import annotations

import torch

from mlserve.engine.llm.logits import process_row
from mlserve.engine.llm.sequence import Sequence
from mlserve.spec import Sampled, SamplingParams


class Sampler:
    """Samples one token per row of logits; each seeded request keeps its own generator."""

    def __init__(self, eos_token_id: int | None = None) -> None:
        self._generators: dict[str, torch.Generator] = {}
        self._eos_token_id = eos_token_id

    def forget(self, req_id: str) -> None:
        self._generators.pop(req_id, None)

    def sample(self, logits: torch.Tensor, req_ids: list[str], params: list[SamplingParams],
               seqs: list[Sequence] | None = None) -> list[Sampled]:
        """logits [S, vocab] fp32 -> one Sampled per row. Rows whose params change logits need their
        sequence (`seqs`, same order) for its token history."""
        greedy = logits.argmax(-1).tolist()  # one call for the whole batch; most rows are usually greedy
        log_norms = logits.logsumexp(-1).tolist()  # the sampled token's logprob is kept for every row
        out = []
        for i, (row, req_id, p, best) in enumerate(zip(logits, req_ids, params, greedy)):
            chosen_from = row
            if p.changes_logits:
                seq = seqs[i]
                chosen_from = process_row(row, p, seq.prompt_token_ids, seq.output_token_ids, self._eos_token_id)
                best = int(chosen_from.argmax())
            token = best if p.is_greedy else self._draw(chosen_from, req_id, p)
            logprob = float(row[token]) - log_norms[i]
            out.append(self._with_logprobs(row, token, p) if p.logprobs else Sampled(token, logprob))
        return out

    def _draw(self, row: torch.Tensor, req_id: str, p: SamplingParams) -> int:
        scaled = row / p.temperature
        if 0 < p.top_k < scaled.shape[0]:
            kth = torch.topk(scaled, p.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(scaled, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative - sorted_logits.softmax(-1) >= p.top_p  # keep the token that crosses top_p
            scaled = scaled.scatter(0, order[drop], float("-inf"))
        probs = scaled.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self._generator(req_id, p)))

    def _generator(self, req_id: str, p: SamplingParams) -> torch.Generator:
        gen = self._generators.get(req_id)
        if gen is None:
            gen = torch.Generator()
            if p.seed is not None:
                gen.manual_seed(p.seed)
            else:
                gen.seed()
            self._generators[req_id] = gen
        return gen

    @staticmethod
    def _with_logprobs(row: torch.Tensor, token: int, p: SamplingParams) -> Sampled:
        if p.logprobs is None:
            return Sampled(token)
        logprobs = row.log_softmax(-1)
        top = ()
        if p.logprobs > 0:
            values, ids = torch.topk(logprobs, min(p.logprobs, logprobs.shape[0]))
            top = tuple((int(i), float(v)) for i, v in zip(ids, values))
        return Sampled(token, float(logprobs[token]), top)
