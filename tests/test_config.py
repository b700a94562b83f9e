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
])
def test_bad_settings_are_named(tmp_path, text, needle):
    file = tmp_path / "mlserve.toml"
    file.write_text(text)
    with pytest.raises(ValueError, match=needle):
        load_config(file, environ={})
