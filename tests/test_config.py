from __future__ import annotations

import pytest

from mlserve.config import load_config


def test_order_defaults_file_env_flags(tmp_path):
    file = tmp_path / "mlserve.toml"
    file.write_text('[server]\nport = 9001\nhost = "0.0.0.0"\n[registry]\nmodels = "/from/file"\n')
    config = load_config(file, environ={"MLSERVE_SERVER_PORT": "9002", "MLSERVE_MODELS": "/from/env"},
                         overrides={"server": {"port": 9003, "host": None}})
    assert config.server.port == 9003          # flag beats environment
    assert config.server.host == "0.0.0.0"     # file beats default; an unset flag changes nothing
    assert config.registry.models == "/from/env"
    assert config.server.log_level == "info"


@pytest.mark.parametrize("text, needle", [
    ("[server]\nport = 70000\n", "port"),
    ("[server]\nlog_level = 'loud'\n", "log_level"),
    ("[nope]\nx = 1\n", "unknown section"),
    ("[server]\nprot = 1\n", "unknown setting"),
    ("[state]\nurl = 'http://redis:6379'\n", "scheme 'http'"),
    ("[state]\nurl = 'redis://:pw@'\n", "names no host"),
    ("[state]\nprefix = 'a b'\n", r"\[state\] prefix"),
    ("[state]\nhost = 'redis'\n", r"unknown setting\(s\) in \[state\]: host"),
])
def test_bad_settings_are_named(tmp_path, text, needle):
    file = tmp_path / "mlserve.toml"
    file.write_text(text)
    with pytest.raises(ValueError, match=needle):
        load_config(file, environ={})


@pytest.mark.parametrize("text, needle", [
    ('[auth]\nadmin_enabled = "false"\n', "[auth] admin_enabled must be a boolean"),
    ('[server]\nport = "9000"\n', "[server] port must be an integer"),
    ('[server]\nport = true\n', "[server] port must be an integer"),
    ('[server]\nshutdown_grace_s = "5"\n', "[server] shutdown_grace_s must be a number"),
    ('[registry]\nmodels = 3\n', "[registry] models must be a string"),
    ('server = 3\n', "server must be a table"),
])
def test_settings_from_the_file_are_type_checked(tmp_path, text, needle):
    file = tmp_path / "mlserve.toml"
    file.write_text(text)
    with pytest.raises(ValueError) as caught:
        load_config(file, environ={})
    assert needle in str(caught.value)


def test_an_int_is_a_valid_float_setting(tmp_path):
    file = tmp_path / "mlserve.toml"
    file.write_text("[server]\nshutdown_grace_s = 5\n")
    assert load_config(file, environ={}).server.shutdown_grace_s == 5.0


@pytest.mark.parametrize("env, needle", [
    ({"MLSERVE_SERVER_PORT": "nine"}, "MLSERVE_SERVER_PORT must be an integer"),
    ({"MLSERVE_AUTH_ADMIN_ENABLED": "nope"}, "MLSERVE_AUTH_ADMIN_ENABLED must be a boolean"),
    ({"MLSERVE_LIMITS_DEFAULT_TIMEOUT_S": "soon"}, "MLSERVE_LIMITS_DEFAULT_TIMEOUT_S must be a number"),
])
def test_settings_from_the_environment_are_type_checked(env, needle):
    with pytest.raises(ValueError, match=needle):
        load_config(None, environ=env)


@pytest.mark.parametrize("text, env, needle", [
    ('[auth]\nadmin_enabled = "false"\n', {}, "[auth] admin_enabled"),
    ('[server]\nport = "9000"\n', {}, "[server] port"),
    ("", {"MLSERVE_SERVER_PORT": "x9000"}, "MLSERVE_SERVER_PORT"),
    ("[state]\nurl = 'redis://h:6379/zero'\n", {}, "[state] url database must be a number"),
])
def test_start_refuses_a_mistyped_setting_in_one_line_with_exit_2(tmp_path, text, env, needle):
    import os
    import subprocess
    import sys

    from tests.server_process import ROOT

    (tmp_path / "models").mkdir()
    file = tmp_path / "mlserve.toml"
    file.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "mlserve", "start", "--models", str(tmp_path / "models"), "--config", str(file),
         "--host", "0.0.0.0", "--port", "0"],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr
