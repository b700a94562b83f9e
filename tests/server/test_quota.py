"""A key's quota end to end: `mlserve keys create --quota`, a real server with --auth-keys, the
quota's requests admitted and the next refused with 429 naming it, the usage in /metrics and in
`mlserve keys list`."""

from __future__ import annotations

import numpy as np

from mlserve.examples import write_identity_onnx
from tests.server.http import call, infer_body
from tests.server.test_auth import keys_cli, make_key
from tests.server_process import MlserveProcess


def test_a_quota_admits_its_count_then_429_with_the_reason_and_shows_in_metrics(tmp_path):
    write_identity_onnx(tmp_path / "repo" / "identity" / "1" / "model.onnx", "FP32")
    keys_file = tmp_path / "keys.json"
    token = make_key(keys_file, "capped", "--scopes", "infer", "--quota", "5", "--quota-period", "month")
    listed = keys_cli("list", "--file", str(keys_file))
    assert "quota=5/month" in listed.stdout, listed
    assert keys_cli("create", "--file", str(keys_file), "--name", "bad", "--quota", "-1").returncode == 2
    server = MlserveProcess(tmp_path / "repo", "--auth-keys", str(keys_file), log_path=tmp_path / "log").wait_ready()
    try:
        url, headers = f"{server.url}/v2/models/identity/infer", {"Authorization": f"Bearer {token}"}
        x = np.ones((1, 3), np.float32)
        statuses = [call(url, infer_body(x), headers) for _ in range(8)]
        assert [a.status for a in statuses] == [200] * 5 + [429] * 3, statuses[0]
        assert "5 requests per month (quota used up)" in statuses[-1].body["error"]
        assert int(statuses[-1].headers["Retry-After"]) >= 1
        metrics = call(f"{server.url}/metrics").body
        key_id = token.split("_")[1]
        assert f'mlserve_key_quota_used{{key_id="{key_id}"}} 5.0' in metrics
    finally:
        assert server.stop() == 0, server.log()


def test_a_token_quota_admits_generations_until_their_tokens_reach_it_then_429_with_the_reason(tmp_path):
    """`--token-quota 40`: each completion's usage (prompt and completion tokens, as the answer reports
    it) counts; the first completion after the sum reached 40 is refused with 429 naming the token
    quota, inference on other routes is not, and /metrics and `keys list` show the use."""
    import openai

    from mlserve.examples_llm import LLM_TOML, write_tiny_gpt2

    folder = tmp_path / "repo" / "gpt" / "1"
    folder.mkdir(parents=True)
    write_tiny_gpt2(folder)
    (tmp_path / "repo" / "gpt" / "model.toml").write_text(LLM_TOML)
    write_identity_onnx(tmp_path / "repo" / "identity" / "1" / "model.onnx", "FP32")
    keys_file = tmp_path / "keys.json"
    token = make_key(keys_file, "writer", "--scopes", "infer", "--token-quota", "40")
    assert "token_quota=40/day" in keys_cli("list", "--file", str(keys_file)).stdout
    assert keys_cli("create", "--file", str(keys_file), "--name", "bad", "--token-quota", "-5").returncode == 2
    server = MlserveProcess(tmp_path / "repo", "--auth-keys", str(keys_file), log_path=tmp_path / "log").wait_ready()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0)
        spent, answered = 0, 0
        while True:
            try:
                done = client.completions.create(model="gpt", prompt="hello there", max_tokens=6, temperature=0)
            except openai.RateLimitError as exc:
                refusal = exc
                break
            assert spent < 40, "a completion was admitted after the quota was reached"
            spent += done.usage.total_tokens
            answered += 1
            assert answered < 20
        assert spent >= 40 and answered >= 2
        assert "40 generation tokens per day (token quota used up)" in str(refusal)
        x = np.ones((1, 3), np.float32)
        assert call(f"{server.url}/v2/models/identity/infer", infer_body(x),
                    {"Authorization": f"Bearer {token}"}).status == 200  # the request quota is another matter
        metrics = call(f"{server.url}/metrics").body
        key_id = token.split("_")[1]
        assert f'mlserve_key_token_quota_used{{key_id="{key_id}"}} 40.0' in metrics
        assert f'mlserve_key_token_quota_limit{{key_id="{key_id}"}} 40.0' in metrics
    finally:
        assert server.stop() == 0, server.log()
