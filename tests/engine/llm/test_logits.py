"""The logit processors on hand-made rows: each rule computed here independently, element by element."""

from __future__ import annotations

import math

import torch

from mlserve.engine.llm.logits import process_row
from mlserve.engine.llm.sampler import Sampler
from mlserve.engine.llm.sequence import SamplingParams, Sequence

ROW = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0, 1.0])


def test_each_rule_matches_its_definition():
    prompt, output = [0, 1], [3, 3, 5]
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=2.0,
                       logit_bias=((4, 10.0),))
    got = process_row(ROW, p, prompt, output, eos_token_id=None).tolist()
    expected = ROW.tolist()
    expected[4] += 10.0
    for token in set(prompt) | set(output):
        expected[token] = expected[token] / 2.0 if expected[token] > 0 else expected[token] * 2.0
    for token in set(output):
        expected[token] -= 0.25 * output.count(token) + 0.5
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(got, expected))
    assert ROW.tolist()[4] == -2.0  # the raw row is left as it was


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    p = SamplingParams(min_tokens=2, stop_token_ids=(3,))
    early = process_row(ROW, p, [0], [1], eos_token_id=5)
    assert early[3] == float("-inf") and early[5] == float("-inf") and early[0] == ROW[0]
    assert process_row(ROW, p, [0], [1, 2], eos_token_id=5).tolist() == ROW.tolist()


def test_the_sampler_applies_the_rules_and_reports_raw_logprobs():
    sampler = Sampler(eos_token_id=3)
    seq = Sequence("r", [0], SamplingParams(temperature=0.0, min_tokens=1))
    token = sampler.sample(ROW[None, :], ["r"], [seq.params], [seq])[0]
    assert token.token_id == 0  # 3 (the EOS, the best) is held back
    assert math.isclose(token.logprob, float(ROW.log_softmax(-1)[0]), rel_tol=1e-6)
