"""Settings: defaults, the TOML file, environment overrides, plain-words refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_app.config import EMBEDDED_BUNDLE, default_data_dir, load_settings
from edge_app.errors import ConfigError


def test_defaults() -> None:
    s = load_settings(environ={})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8080)
    assert s.storage.data_dir == default_data_dir()
    assert s.model.bundle == EMBEDDED_BUNDLE and s.model.runner == "auto"
    assert s.imaging.max_pixels == 50_000_000


def test_file_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[server]\nport = 9000\n[imaging]\nframe = "first"\n[storage]\ndata_dir = "/srv/edge"\n')
    s = load_settings(cfg, environ={"EDGE_APP_SERVER_PORT": "9100", "EDGE_APP_IMAGING_MAX_PIXELS": "1000"})
    assert s.server.port == 9100, "the environment overrides the file"
    assert s.imaging.frame == "first" and s.imaging.max_pixels == 1000
    assert s.storage.data_dir == Path("/srv/edge")


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("[server]\nport = 70000\n", {}, r"server.port: Input should be less than or equal to 65535"),
        ("[server]\nprot = 1\n", {}, r"server.prot: Extra inputs are not permitted"),
        ("[server\n", {}, "is not valid TOML"),
        ("", {"EDGE_APP_SERVER_PORTS": "1"}, "EDGE_APP_SERVER_PORTS names no setting"),
        ("", {"EDGE_APP_IMAGING_FRAME": "sideways"}, "imaging.frame"),
    ],
)
def test_invalid_configuration(tmp_path: Path, text: str, environ: dict[str, str], message: str) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg, environ=environ)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "none.toml", environ={})


def test_refuses_to_serve_the_network_without_a_secret() -> None:
    with pytest.raises(ConfigError, match=r"refusing to listen on 0.0.0.0"):
        load_settings(environ={"EDGE_APP_SERVER_HOST": "0.0.0.0"})
    s = load_settings(environ={"EDGE_APP_SERVER_HOST": "0.0.0.0", "EDGE_APP_SERVER_SECRET_KEY": "k" * 40})
    assert s.server.host == "0.0.0.0"


def test_the_appliance_configuration_file_is_valid() -> None:
    from conftest import ROOT

    s = load_settings(ROOT / "firmware_config" / "edge-app.toml", environ={})
    assert s.storage.data_dir == Path("/var/lib/edge-app") and s.server.host == "127.0.0.1"
