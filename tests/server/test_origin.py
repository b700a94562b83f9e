"""The browser gate's one decision on (method, path, headers): Host names, origins and body types."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from mlserve.config import ServerConfig
from mlserve.server.origin import BrowserGate

INFER = "/v2/models/mlp/infer"


def gate(**server) -> BrowserGate:
    return BrowserGate.from_config(ServerConfig(**server))


def check(g: BrowserGate, method: str = "GET", path: str = INFER, **headers: str):
    return g.check(method, path, CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LOCALHOST:8000", "127.0.0.1", "127.0.0.1:8000",
                                  "127.1.2.3:9", "[::1]", "[::1]:8000", "localhost.:8000"])
def test_loopback_names_pass_by_default(host):
    assert check(gate(), Host=host) is None


@pytest.mark.parametrize("host", ["rebind.evil.example", "rebind.evil.example:8000", "10.0.0.5:8000",
                                  "127.0.0.1.evil.example", "localhost.evil.example:8000", "[::2]:8000"])
def test_other_hosts_are_refused_with_403_naming_the_setting(host):
    refusal = check(gate(), Host=host)
    assert refusal is not None and refusal.status == 403 and "allowed_hosts" in refusal.message


def test_the_bound_address_and_listed_names_pass():
    g = gate(host="10.1.2.3", allowed_hosts=("api.example", ".corp.example"))
    assert check(g, Host="10.1.2.3:8000") is None
    assert check(g, Host="api.example") is None
    assert check(g, Host="corp.example:443") is None and check(g, Host="a.b.corp.example") is None
    assert check(g, Host="evilcorp.example") is not None and check(g, Host="api.example.evil") is not None
    assert check(g, Host="10.1.2.4") is not None


def test_a_wildcard_bind_answers_any_ip_address_but_only_listed_names():
    g = gate(host="0.0.0.0")
    assert check(g, Host="10.244.0.17:8000") is None  # a pod IP: kubelet probes, Prometheus
    assert check(g, Host="[fd00::5]:8000") is None
    assert check(g, Host="mlserve.default.svc") is not None


def test_star_allows_any_host():
    assert check(gate(allowed_hosts=("*",)), Host="rebind.evil.example") is None


def test_no_host_header_is_not_a_browser_and_passes():
    assert check(gate()) is None


def test_same_origin_passes_and_other_origins_are_refused():
    g = gate()
    assert check(g, "POST", Host="127.0.0.1:8000", Origin="http://127.0.0.1:8000",
                 Content_Type="application/json", Content_Length="2") is None
    assert check(g, "POST", Host="localhost", Origin="http://localhost:80", Content_Type="application/json",
                 Content_Length="2") is None
    for origin in ("https://evil.example", "http://127.0.0.1:8001", "http://localhost:8000", "null"):
        refusal = check(g, "POST", Host="127.0.0.1:8000", Origin=origin, Content_Type="application/json",
                        Content_Length="2")
        assert refusal is not None and refusal.status == 403 and "cors_origins" in refusal.message, origin


def test_a_listed_origin_passes_and_gets_cors_headers():
    g = gate(cors_origins=("https://app.example", "http://localhost:3000/"))
    headers = CIMultiDict({"Host": "127.0.0.1:8000", "Origin": "https://app.example"})
    assert g.check("GET", INFER, headers) is None
    assert check(g, Host="127.0.0.1:8000", Origin="http://localhost:3000") is None
    answer = g.cors_headers(headers)
    assert answer["Access-Control-Allow-Origin"] == "https://app.example" and answer["Vary"] == "Origin"
    assert "Mlserve-Model-Version" in answer["Access-Control-Expose-Headers"]
    assert g.cors_headers(CIMultiDict({"Origin": "https://evil.example"})) == {"Vary": "Origin"}
    assert gate().cors_headers(headers) == {}  # CORS off: nothing added


def test_a_preflight_from_a_listed_origin_is_answered():
    g = gate(cors_origins=("https://app.example",))
    headers = CIMultiDict({"Host": "127.0.0.1:8000", "Origin": "https://app.example",
                           "Access-Control-Request-Method": "POST",
                           "Access-Control-Request-Headers": "authorization, content-type"})
    assert g.check("OPTIONS", INFER, headers) is None and g.is_preflight("OPTIONS", headers)
    answer = g.preflight_headers(headers)
    assert answer["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in answer["Access-Control-Allow-Methods"]
    assert answer["Access-Control-Allow-Headers"] == "authorization, content-type"
    evil = CIMultiDict({**headers, "Origin": "https://evil.example"})
    assert g.check("OPTIONS", INFER, evil).status == 403


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.api+json", "application/octet-stream"])
def test_json_and_binary_bodies_pass(content_type):
    assert check(gate(), "POST", Host="localhost", Content_Type=content_type, Content_Length="10") is None


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml"])
def test_other_body_types_are_refused_with_415(content_type):
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        refusal = check(gate(), method, Host="localhost", Content_Type=content_type, Content_Length="10")
        assert refusal is not None and refusal.status == 415 and "application/json" in refusal.message
    chunked = check(gate(), "POST", Host="localhost", Content_Type=content_type, Transfer_Encoding="chunked")
    assert chunked is not None and chunked.status == 415


def test_a_body_with_no_type_passes_only_from_clients_that_are_not_browsers():
    assert check(gate(), "POST", Host="localhost", Content_Length="10") is None  # tritonclient.http
    refusal = check(gate(), "POST", Host="localhost", Content_Length="10", Sec_Fetch_Site="same-origin",
                    Sec_Fetch_Mode="no-cors")
    assert refusal is not None and refusal.status == 415 and "no Content-Type" in refusal.message


def test_no_body_needs_no_type():
    assert check(gate(), "POST", Host="localhost", Content_Length="0", Content_Type="text/plain") is None
    assert check(gate(), "POST", Host="localhost") is None
    assert check(gate(), "GET", Host="localhost", Content_Type="text/plain") is None


@pytest.mark.parametrize("server, needle", [
    ({"allowed_hosts": ("https://x.example",)}, "allowed_hosts"),
    ({"allowed_hosts": ("x.example:8000",)}, "allowed_hosts"),
    ({"cors_origins": ("app.example",)}, "cors_origins"),
    ({"cors_origins": ("https://app.example/path",)}, "cors_origins"),
    ({"trusted_proxies": ("10.0.0.0/33",)}, "trusted_proxies"),
])
def test_bad_entries_are_refused_naming_the_setting(server, needle):
    with pytest.raises(ValueError, match=needle):
        ServerConfig(**server)


def test_list_settings_come_from_the_file_the_environment_and_flags(tmp_path):
    from mlserve.config import load_config

    file = tmp_path / "mlserve.toml"
    file.write_text('[server]\nallowed_hosts = ["a.example"]\ncors_origins = ["https://app.example"]\n')
    config = load_config(file, environ={"MLSERVE_SERVER_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"},
                         overrides={"server": {"allowed_hosts": "b.example,.c.example"}})
    assert config.server.allowed_hosts == ("b.example", ".c.example")
    assert config.server.cors_origins == ("https://app.example",)
    assert config.server.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    file.write_text('[server]\nallowed_hosts = "a.example"\ncors_origins = [1]\n')
    with pytest.raises(ValueError, match=r"\[server\] cors_origins must be a list of strings"):
        load_config(file, environ={})


def test_remembered_host_verdicts_are_bounded_and_stay_right():
    from mlserve.server import origin

    g = gate()
    for i in range(origin.MAX_REMEMBERED_HOSTS + 50):
        assert check(g, Host=f"evil{i}.example") is not None
    assert check(g, Host="localhost:8000") is None and check(g, Host="evil1.example") is not None
