"""A page on another origin, in Debian's headless Chromium, tries what issue 25's attacker did against
a server with keys off: infer, upload a version through Triton's load API (`file:` contents) and pin,
with `fetch` in both `cors` and `no-cors` modes (a `no-cors` text/plain POST needs no preflight, so
only the server can stop it). Refused from an unlisted origin, with nothing changed on the server;
allowed, and readable, from an origin listed in `[server] cors_origins`."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import threading
from pathlib import Path

import pytest

from mlserve.examples import write_identity_onnx
from tests.server.http import call, metric_value
from tests.server_process import MlserveProcess
from tests.ui.browser import chromium

pytestmark = pytest.mark.timeout(180)

ATTACK_JS = """
const [base, onnx, done] = arguments;
const results = {};
const infer = JSON.stringify({inputs: [{name: "x", shape: [1, 3], datatype: "FP32", data: [1, 2, 3]}]});
const upload = JSON.stringify({parameters: {"file:5/model.onnx": onnx}});
const json = {"Content-Type": "application/json"};
async function attempt(name, path, init) {
  try {
    const r = await fetch(base + path, init);
    results[name] = {status: r.status, type: r.type, body: r.type === "opaque" ? null : await r.text()};
  } catch (err) {
    results[name] = {error: String(err)};
  }
}
(async () => {
  await attempt("status", "/status", {});
  await attempt("infer_json", "/v2/models/identity/infer", {method: "POST", headers: json, body: infer});
  await attempt("infer_text", "/v2/models/identity/infer", {method: "POST", body: infer});
  await attempt("infer_no_cors", "/v2/models/identity/infer", {method: "POST", mode: "no-cors", body: infer});
  await attempt("upload_no_cors", "/v2/repository/models/identity/load", {method: "POST", mode: "no-cors", body: upload});
  await attempt("pin_no_cors", "/admin/models/identity/pin",
                {method: "POST", mode: "no-cors", body: JSON.stringify({version: 1})});
  await attempt("upload_json", "/v2/repository/models/identity/load", {method: "POST", headers: json, body: upload});
  await attempt("pin_json", "/admin/models/identity/pin",
                {method: "POST", headers: json, body: JSON.stringify({version: 5})});
  done(results);
})();
"""


@contextlib.contextmanager
def page_server(folder: Path):
    """A second origin: a plain file server on another port of 127.0.0.1 serving one empty page."""
    (folder / "index.html").write_text("<!doctype html><title>elsewhere</title><p>another origin</p>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def run_attack(page_url: str, server_url: str, onnx: bytes) -> dict:
    with chromium() as driver:
        driver.set_script_timeout(60)
        driver.get(f"{page_url}/index.html")
        return driver.execute_async_script(ATTACK_JS, server_url, base64.b64encode(onnx).decode())


def served_200s(url: str) -> float:
    return metric_value(url, "mlserve_requests_total", model="identity", version="1", code="200")


def test_a_page_on_another_origin_can_neither_infer_upload_nor_administer(tmp_path):
    write_identity_onnx(tmp_path / "repo" / "identity" / "1" / "model.onnx", "FP32")
    onnx = (tmp_path / "repo" / "identity" / "1" / "model.onnx").read_bytes()
    site = tmp_path / "site"
    site.mkdir()
    proc = MlserveProcess(tmp_path / "repo", log_path=tmp_path / "log")
    try:
        url = proc.wait_ready().url
        with page_server(site) as page:
            results = run_attack(page, url, onnx)
        for name in ("status", "infer_json", "infer_text", "upload_json", "pin_json"):
            assert "Failed to fetch" in results[name].get("error", ""), (name, results[name])
        for name in ("infer_no_cors", "upload_no_cors", "pin_no_cors"):
            assert results[name]["type"] == "opaque", (name, results[name])
        assert not (tmp_path / "repo" / "identity" / "5").exists()
        assert call(f"{url}/admin/models/identity").body["pinned"] is None
        assert served_200s(url) == 0
        assert call(f"{url}/v2/models/identity/infer",
                    {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}).status == 200
        assert served_200s(url) == 1  # the control: a request the server did serve is counted
    finally:
        assert proc.stop() == 0, proc.log()


def test_a_page_on_a_listed_origin_may_call_the_server(tmp_path):
    write_identity_onnx(tmp_path / "repo" / "identity" / "1" / "model.onnx", "FP32")
    onnx = (tmp_path / "repo" / "identity" / "1" / "model.onnx").read_bytes()
    site = tmp_path / "site"
    site.mkdir()
    with page_server(site) as page:
        proc = MlserveProcess(tmp_path / "repo", "--cors-origins", page, log_path=tmp_path / "log")
        try:
            url = proc.wait_ready().url
            results = run_attack(page, url, onnx)
            assert results["status"]["status"] == 200, results["status"]
            assert results["infer_json"]["status"] == 200 and '"data":[1.0,2.0,3.0]' in results["infer_json"]["body"]
            assert results["infer_text"]["status"] == 415 and "application/json" in results["infer_text"]["body"]
            assert results["upload_json"]["status"] == 200, results["upload_json"]
            assert results["pin_json"]["status"] == 200, results["pin_json"]
            assert (tmp_path / "repo" / "identity" / "5" / "model.onnx").read_bytes() == onnx
            assert call(f"{url}/admin/models/identity").body["pinned"] == 5
        finally:
            assert proc.stop() == 0, proc.log()
