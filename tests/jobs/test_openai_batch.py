"""OpenAI batch files through `mlserve batch` and as an in-server job: each response equals the same
request sent alone to a running server's /v1 routes with the openai client (greedy, so token for token)."""

from __future__ import annotations

import orjson
import pytest

from tests.jobs.helpers import read_jsonl, run_batch
from tests.jobs.test_jobs_e2e import finished, wait_job
from tests.server.http import call
from tests.server.openai_helpers import client
from tests.server_process import serving

pytest.importorskip("transformers", reason="writing the tiny LLM needs transformers (the dev extra)")

MODEL = "tiny-gpt2"
PROMPTS = ["The model server", "hello world", "Numbers: 0 1 2", "A request waits in a queue", "the sky is"]


@pytest.fixture(scope="module")
def llm_repo(tmp_path_factory):
    from mlserve.examples_llm import LLM_TOML, write_tiny_gpt2

    root = tmp_path_factory.mktemp("llm_repo")
    (root / MODEL / "1").mkdir(parents=True)
    write_tiny_gpt2(root / MODEL / "1")
    (root / MODEL / "model.toml").write_text(LLM_TOML)
    return root


def requests():
    lines = []
    for i, prompt in enumerate(PROMPTS):
        lines.append({"custom_id": f"cmpl-{i}", "method": "POST", "url": "/v1/completions",
                      "body": {"model": MODEL, "prompt": prompt, "max_tokens": 4 + 3 * i, "temperature": 0}})
        lines.append({"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                               "max_tokens": 12, "temperature": 0}})
    return lines


def test_batch_file_matches_requests_sent_one_by_one(llm_repo, tmp_path):
    lines = requests()
    refused = {"custom_id": "bad-model", "method": "POST", "url": "/v1/completions",
               "body": {"model": "other", "prompt": "x"}}
    src = tmp_path / "requests.jsonl"
    src.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in [*lines, refused]) + b"not a request\n")
    done = run_batch(llm_repo, MODEL, src, tmp_path / "results.jsonl")
    assert done.returncode == 3, done.stderr  # complete, with one line that was not a request
    results = read_jsonl(tmp_path / "results.jsonl")
    assert [r["custom_id"] for r in results] == [line["custom_id"] for line in [*lines, refused]]
    errors = read_jsonl(tmp_path / "results.jsonl.errors.jsonl")
    assert [e["row"] for e in errors] == [len(lines) + 1] and "not valid JSON" in errors[0]["error"]
    assert results[-1]["response"]["status_code"] == 400
    assert "names 'other'" in results[-1]["response"]["body"]["error"]["message"]

    with serving(llm_repo, "--batch-dir", str(tmp_path), log_path=tmp_path / "m.log") as server:
        api = client(server)
        for line, result in zip(lines, results):
            response = result["response"]
            assert response["status_code"] == 200, result
            body = dict(line["body"])
            if line["url"] == "/v1/completions":
                alone = api.completions.create(**body)
                assert response["body"]["choices"][0]["text"] == alone.choices[0].text
            else:
                alone = api.chat.completions.create(**body)
                assert response["body"]["choices"][0]["message"]["content"] == alone.choices[0].message.content
            assert response["body"]["choices"][0]["finish_reason"] == alone.choices[0].finish_reason
            assert response["body"]["usage"]["completion_tokens"] == alone.usage.completion_tokens
            assert response["body"]["usage"]["prompt_tokens"] == alone.usage.prompt_tokens

        job = call(f"{server.url}/v2/batch/jobs", {"model": MODEL, "input": "requests.jsonl", "output": "job.jsonl"})
        assert job.status == 201, job.body
        done = wait_job(server.url, job.body["id"], finished)
        assert (done["rows_done"], done["rows_failed"]) == (len(lines) + 2, 1)
    in_server = read_jsonl(tmp_path / "job.jsonl")
    assert [r["custom_id"] for r in in_server] == [r["custom_id"] for r in results]
    for offline, served in zip(results, in_server):
        assert served["response"]["status_code"] == offline["response"]["status_code"]
        assert served["response"]["body"].get("choices") == offline["response"]["body"].get("choices")
