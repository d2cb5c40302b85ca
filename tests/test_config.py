"""Settings: defaults, the TOML file, environment overrides, plain-words refusals."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest

from edge_app.config import (
    CONFIG_ENV,
    EMBEDDED_BUNDLE,
    ENV_PREFIX,
    check_secure,
    default_config,
    default_data_dir,
    load_settings,
)
from edge_app.errors import ConfigError
from edge_app.ops.secrets import init_tls

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    s = load_settings(environ={})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8080)
    assert s.storage.data_dir == default_data_dir()
    assert s.model.bundle == EMBEDDED_BUNDLE and s.model.runner == "auto"
    assert s.imaging.max_pixels == 25_000_000 and s.imaging.max_decode_mb == 320 and s.imaging.decoders == 0
    assert (s.worker.lease_s, s.worker.max_attempts, s.worker.idle_s) == (600.0, 3, 30.0)
    assert (s.outputs.connect_timeout_s, s.outputs.answer_timeout_s) == (3.0, 10.0)


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


def test_refuses_to_serve_the_network_without_tls(tmp_path: Path) -> None:
    env = {"EDGE_APP_SERVER_HOST": "0.0.0.0", "EDGE_APP_STORAGE_DATA_DIR": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"refusing to listen on 0.0.0.0: .* needs TLS: run `edge-app tls init`"):
        check_secure(load_settings(environ=env))
    with pytest.raises(ConfigError, match=r"refusing to listen on 0.0.0.0: TLS file\(s\) not found: .*/none.pem"):
        check_secure(
            load_settings(
                environ={
                    **env,
                    "EDGE_APP_SERVER_TLS_CERT": str(tmp_path / "none.pem"),
                    "EDGE_APP_SERVER_TLS_KEY": str(tmp_path / "none.pem"),
                }
            )
        )
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_settings(environ={**env, "EDGE_APP_SERVER_TLS_CERT": str(tmp_path / "cert.pem")})
    check_secure(load_settings(environ={"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path)}))  # loopback: no TLS needed
    settings = load_settings(environ=env)
    init_tls(settings, ["clinic-ai.local"])
    check_secure(settings)  # `edge-app tls init`'s files are found where they were written


SECRET = "Zq8-vR2!mK4pW7xL9nB3cT6yH1jD5fG0"  # 32 characters


def test_secret_key_length_boundary() -> None:
    env = {"EDGE_APP_SERVER_HOST": "0.0.0.0"}
    assert load_settings(environ={**env, "EDGE_APP_SERVER_SECRET_KEY": SECRET}).server.secret_key == SECRET
    with pytest.raises(ConfigError, match="at least 32 characters"):
        load_settings(environ={**env, "EDGE_APP_SERVER_SECRET_KEY": SECRET[:31]})


@pytest.mark.parametrize("weak", [" " * 32, " " * 20 + SECRET[:12] + " " * 20, "ab" * 20])
def test_weak_secret_keys_are_refused(weak: str) -> None:
    """Spaces do not count, nor a key of a few characters repeated; not even on loopback, where it is still used."""
    for host in ("0.0.0.0", "127.0.0.1"):
        with pytest.raises(ConfigError, match=r"server\.secret_key"):
            load_settings(environ={"EDGE_APP_SERVER_HOST": host, "EDGE_APP_SERVER_SECRET_KEY": weak})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nport = true\n", "server.port: Input should be a valid integer"),
        ('[server]\nport = "8080"\n', "server.port: Input should be a valid integer"),
        ("[server]\nport = 8080.5\n", "server.port: Input should be a valid integer"),
        ("[model]\nrequire_signature = 1\n", "model.require_signature: Input should be a valid boolean"),
        ('[server]\nhost = "not a host!"\n', "server.host: .*'not a host!' is not an IP address or a host name"),
        ('[server]\nhost = "-bad.example"\n', "is not an IP address or a host name"),
        ("[imaging]\ndecode_timeout_s = 0\n", "imaging.decode_timeout_s: Input should be greater than 0"),
        ('[capture.dicom]\nae_title = "SEVENTEEN_CHARS_X"\n', "capture.dicom.ae_title: .*is not an AE title"),
        ('[capture.dicom]\nallowed_ae_titles = ["A\\\\B"]\n', "capture.dicom.allowed_ae_titles.0: .*not an AE title"),
        ('[capture.dicom]\nallowed_addresses = ["10.0.0.0/33"]\n', "is not an IP address or network"),
        ('[capture.dicom]\ntls_key = "k.pem"\n', "tls_cert and tls_key go together"),
        ("[capture.folder]\nenabled = true\n", "a watched folder needs its path"),
        (
            '[[outputs.destinations]]\nae_title = "PACS"\nhost = "not a host!"\n',
            "outputs.destinations.0.host: .*not an IP address or a host name",
        ),
    ],
)
def test_values_of_the_wrong_type_are_refused(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg, environ={})


def test_host_names_and_addresses_are_accepted() -> None:
    for host in ("localhost", "edge-box.clinic.local", "192.168.1.20", "::1", "fe80::1"):
        assert load_settings(environ={"EDGE_APP_SERVER_HOST": host, "EDGE_APP_SERVER_SECRET_KEY": SECRET})


def test_every_key_can_be_set_from_the_environment(tmp_path: Path) -> None:
    """Numbers, booleans and lists too: lists as a TOML array or comma-separated."""
    keys = tmp_path / "keys"
    s = load_settings(
        environ={
            "EDGE_APP_MODEL_REQUIRE_SIGNATURE": "true",
            "EDGE_APP_MODEL_TRUSTED_KEYS": f"{keys}/a.pub, {keys}/b.pub",
            "EDGE_APP_IMAGING_DECODE_TIMEOUT_S": "2.5",
            "EDGE_APP_MODEL_BUILD_ENGINE_AT_START": "false",
        }
    )
    assert s.model.require_signature is True and s.model.build_engine_at_start is False
    assert s.model.trusted_keys == [keys / "a.pub", keys / "b.pub"]
    assert s.imaging.decode_timeout_s == 2.5
    s = load_settings(environ={"EDGE_APP_MODEL_TRUSTED_KEYS": f'["{keys}"]', "EDGE_APP_SERVER_PORT": "9000"})
    assert s.model.trusted_keys == [keys] and s.server.port == 9000
    with pytest.raises(ConfigError, match=r"server\.port: Input should be a valid integer"):
        load_settings(environ={"EDGE_APP_SERVER_PORT": "true"})


def test_the_appliance_configuration_file_is_valid() -> None:
    from support.data import ROOT

    s = load_settings(ROOT / "firmware_config" / "edge-app.toml", environ={})
    assert s.storage.data_dir == Path("/var/lib/edge-app") and s.server.host == "0.0.0.0"
    assert s.tls_files == (Path("/var/lib/edge-app/tls/cert.pem"), Path("/var/lib/edge-app/tls/key.pem"))
    with pytest.raises(ConfigError, match="needs TLS"):
        check_secure(s)  # until `edge-app tls init` has run on the box


def _reference_block() -> str:
    from support.data import ROOT

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    return text.split("```toml\n", 1)[1].split("```", 1)[0]


def test_the_configuration_reference_is_the_commands_output(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/configuration.md holds exactly what `edge-app config --defaults` prints: it cannot go stale."""
    from edge_app.cli.main import main

    assert main(["config", "--defaults"]) == 0
    printed = capsys.readouterr().out
    assert printed == _reference_block(), "docs/configuration.md is stale: paste `edge-app config --defaults` in"
    assert "[capture.dicom]" in printed and "[model.triton]" in printed and "# destinations = [{ ae_title" in printed


def test_the_documented_defaults_are_the_codes_defaults(tmp_path: Path) -> None:
    """The reference, read as a configuration file, is valid and gives every default the code uses."""
    cfg = tmp_path / "reference.toml"
    cfg.write_text(_reference_block())
    assert load_settings(cfg, environ={}) == load_settings(environ={})


def test_the_documented_examples_are_valid(tmp_path: Path) -> None:
    """Each commented-out example, uncommented in place of its default, is a value the service accepts."""
    lines = _reference_block().splitlines()
    examples = {i: line[2:] for i, line in enumerate(lines) if re.match(r"# \w+ = ", line)}
    for i, line in examples.items():
        key = line.split(" = ", 1)[0]
        if i > 0 and lines[i - 1].startswith(f"{key} = "):
            lines[i - 1] = ""
        lines[i] = line
    cfg = tmp_path / "examples.toml"
    cfg.write_text("\n".join(lines))
    s = load_settings(cfg, environ={})
    assert s.model.dla_core == 0 and s.outputs.destinations[0].port == 104 and s.capture.dicom.tls_ca is not None
    assert s.storage.data_dir == Path("/var/lib/edge-app") and s.capture.serial.profiles


def test_host_names_at_their_limits() -> None:
    from edge_app.config import is_host, is_loopback

    label = "a" * 63
    assert is_host(label) and not is_host("a" * 64)
    name = ".".join([label] * 3 + ["b" * 61])  # 253 characters
    assert len(name) == 253 and is_host(name) and not is_host(name + "b")
    assert not is_host("") and not is_host("-a") and not is_host("a-") and is_host("a-b.c") and is_host("a")
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert not is_loopback("localhostx") and not is_loopback("edge.local") and not is_loopback("10.0.0.1")


def test_secret_keys_at_their_limits() -> None:
    from edge_app.config import is_strong_secret

    eight = "abcdefgh" * 4  # 32 characters, 8 different
    assert is_strong_secret(eight) and is_strong_secret(eight + "a")
    assert not is_strong_secret("abcdefg" * 5), "7 different characters"
    assert not is_strong_secret(eight[:31])


def test_the_engine_cache_lives_in_the_data_directory_unless_set(tmp_path: Path) -> None:
    s = load_settings(environ={"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path)})
    assert s.engine_cache == tmp_path / "engines"
    s = load_settings(environ={"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path), "EDGE_APP_MODEL_ENGINE_CACHE": "/e"})
    assert s.engine_cache == Path("/e")


LIMITS = [  # (section, key, lowest accepted, highest accepted or None), whole numbers
    ("server", "port", 1, 65535),
    ("server", "max_upload_mb", 1, 4096),
    ("server", "idle_logout_min", 1, 1440),
    ("server", "login_attempts", 1, 100),
    ("server", "login_lockout_min", 1, 1440),
    ("model", "threads", 0, 64),
    ("model", "max_batch", 1, 256),
    ("storage", "min_free_mb", 0, 1_000_000),
    ("storage", "retention_days", 0, 36500),
    ("imaging", "max_pixels", 1, None),
    ("imaging", "max_decode_mb", 16, 65536),
    ("imaging", "decoders", 0, 16),
    ("worker", "max_attempts", 1, 100),
    ("worker", "burst", 1, 64),
    ("capture.dicom", "port", 1, 65535),
    ("capture.video", "infer_every", 0, 10000),
    ("outputs", "max_attempts", 1, 1000),
    ("model", "engine_build_memory_mb", 512, 1_000_000),
    ("model", "engine_build_timeout_s", 60, 86400),
    ("model", "dla_core", 0, 7),
    ("server", "audit_rows_per_window", 1, 100_000),
    ("capture.dicom", "max_associations", 1, 1000),
    ("capture.dicom", "max_associations_per_address", 1, 1000),
    ("capture.dicom", "max_object_mb", 1, 65536),
    ("capture.dicom", "max_refused_per_min", 0, 100_000),
    ("outputs", "per_association", 1, 10000),
    ("outputs", "backlog_count", 1, None),
    ("monitoring", "min_reviews", 1, None),
    ("monitoring", "min_group_size", 1, None),
    ("monitoring", "drift_window", 10, None),
]
# (section, key, bound, whether the bound itself is accepted, highest accepted or None), seconds and shares
REALS = [
    ("server", "result_wait_s", 0.0, True, 3600.0),
    ("server", "header_timeout_s", 0.0, False, 60.0),
    ("imaging", "decode_timeout_s", 0.0, False, 3600.0),
    ("worker", "lease_s", 0.0, False, 86400.0),
    ("worker", "idle_s", 0.0, False, 3600.0),
    ("capture.folder", "poll_s", 0.0, False, 600.0),
    ("capture.folder", "stable_s", 0.0, True, 600.0),
    ("capture.serial", "exposure_window_s", 0.0, False, 3600.0),
    ("capture.video", "reconnect_s", 0.0, False, 600.0),
    ("outputs", "retry_s", 0.0, False, 86400.0),
    ("model.triton", "timeout_s", 0.0, False, 600.0),
    ("model.triton", "retry_s", 0.0, False, 3600.0),
    ("server", "login_delay_s", 0.0, True, 60.0),
    ("server", "audit_window_s", 0.0, False, 3600.0),
    ("worker", "behind_s", 0.0, False, 86400.0),
    ("capture.dicom", "timeout_s", 0.0, False, 3600.0),
    ("outputs", "connect_timeout_s", 0.0, False, 600.0),
    ("outputs", "answer_timeout_s", 0.0, False, 3600.0),
    ("outputs", "backlog_age_s", 0.0, False, None),
    ("monitoring", "margin", 0.0, False, 1.0),
    ("monitoring", "every_s", 0.0, False, None),
    ("monitoring", "drift_intensity", 0.0, False, 1.0),
    ("monitoring", "drift_rise", 0.0, False, 1.0),
]


def _setting(section: str, key: str, value: object) -> object:
    """Load a file holding `[section] key = value` (the value written as TOML) and read the key back."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "edge.toml"
        cfg.write_text(f"[{section}]\n{key} = {json.dumps(value)}\n")
        settings = load_settings(cfg, environ={})
    for name in section.split("."):
        settings = getattr(settings, name)
    return getattr(settings, key)


def test_one_peer_is_left_fewer_connections_than_there_are_threads(tmp_path: Path) -> None:
    """server.threads 2 to 256, max_connections_per_peer 1 to 255 and fewer than threads (32 and 16 unless set)."""
    cfg = tmp_path / "edge.toml"

    def server(threads: int, per_peer: int) -> Any:
        cfg.write_text(f"[server]\nthreads = {threads}\nmax_connections_per_peer = {per_peer}\n")
        return load_settings(cfg, environ={}).server

    defaults = load_settings(environ={}).server
    assert (defaults.threads, defaults.max_connections_per_peer) == (32, 16)
    assert (server(2, 1).threads, server(256, 255).max_connections_per_peer) == (2, 255)
    for threads, per_peer, message in [
        (1, 1, r"server\.threads: Input should be greater than or equal to 2"),
        (257, 1, r"server\.threads: Input should be less than or equal to 256"),
        (2, 0, r"server\.max_connections_per_peer: Input should be greater than or equal to 1"),
        (8, 8, r"max_connections_per_peer \(8\) must be fewer than threads \(8\)"),
        (4, 10, r"max_connections_per_peer \(10\) must be fewer than threads \(4\)"),
    ]:
        with pytest.raises(ConfigError, match=message):
            server(threads, per_peer)


@pytest.mark.parametrize(("section", "key", "lo", "hi"), LIMITS, ids=[f"{s}.{k}" for s, k, _, _ in LIMITS])
def test_whole_number_settings_at_their_limits(section: str, key: str, lo: int, hi: int | None) -> None:
    for accepted in (lo, hi if hi is not None else 10**12):
        assert _setting(section, key, accepted) == accepted
    for refused in (lo - 1, *((hi + 1,) if hi is not None else ())):
        with pytest.raises(ConfigError, match=rf"{section}\.{key}: Input should be"):
            _setting(section, key, refused)
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: Input should be a valid integer"):
        _setting(section, key, float(lo))


@pytest.mark.parametrize(("section", "key", "lo", "closed", "hi"), REALS, ids=[f"{s}.{k}" for s, k, *_ in REALS])
def test_real_number_settings_at_their_limits(
    section: str, key: str, lo: float, closed: bool, hi: float | None
) -> None:
    tiny = 1e-6
    assert _setting(section, key, hi or 1e9) == (hi or 1e9)
    assert _setting(section, key, lo + tiny) == lo + tiny
    refused = [lo - tiny] + ([] if closed else [lo]) + ([hi + tiny] if hi is not None else [])
    if closed:
        assert _setting(section, key, lo) == lo
    for value in refused:
        with pytest.raises(ConfigError, match=rf"{section}\.{key}: Input should be"):
            _setting(section, key, value)
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: Input should be a valid number"):
        _setting(section, key, "2.5")  # a string, even one that reads as a number: the TOML was written wrong


def test_the_monitoring_s_age_bands_and_drift_significance_at_their_limits(tmp_path: Path) -> None:
    """An adult from above 0 years, an older adult from above that; the drift test's alpha strictly in (0, 1)."""
    cfg = tmp_path / "edge.toml"

    def monitoring(**values: float) -> Any:
        cfg.write_text("[monitoring]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        return load_settings(cfg, environ={}).monitoring

    assert monitoring(adult_from_years=1e-6, older_from_years=1e-5).adult_from_years == 1e-6
    assert monitoring(adult_from_years=16, older_from_years=60).older_from_years == 60.0, "whole years too"
    assert monitoring(drift_alpha=1e-9).drift_alpha == 1e-9 and monitoring(drift_alpha=0.999).drift_alpha == 0.999
    for values, message in [
        ({"adult_from_years": 0.0}, r"adult_from_years: Input should be greater than 0"),
        ({"older_from_years": 0.0}, r"older_from_years: Input should be greater than 0"),
        ({"adult_from_years": 18, "older_from_years": 18}, "older_from_years must be above adult_from_years"),
        ({"adult_from_years": "18"}, r"adult_from_years: Input should be a valid number"),
        ({"drift_alpha": 0.0}, r"drift_alpha: Input should be greater than 0"),
        ({"drift_alpha": 1.0}, r"drift_alpha: Input should be less than 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            monitoring(**values)


def test_ae_titles_at_their_limits() -> None:
    for title in ("A", "A" * 16, "EDGE APP"):
        assert _setting("capture.dicom", "ae_title", title) == title
    for title in ("", "   ", "A" * 17, "EDGE\\APP", "ÉDGE", "EDGE\tAPP"):
        with pytest.raises(ConfigError, match="is not an AE title"):
            _setting("capture.dicom", "ae_title", title)


def test_allowed_addresses_take_a_network_written_from_one_of_its_hosts() -> None:
    assert _setting("capture.dicom", "allowed_addresses", ["192.168.1.7/24"]) == ["192.168.1.7/24"]
    with pytest.raises(ConfigError, match="is not an IP address or network"):
        _setting("capture.dicom", "allowed_addresses", ["192.168.1.300"])


def test_tls_files_go_together_in_both_sections(tmp_path: Path) -> None:
    for section in ("server", "capture.dicom"):
        prefix = f"EDGE_APP_{section.replace('.', '_').upper()}_"
        for given in ("TLS_CERT", "TLS_KEY"):
            with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
                load_settings(environ={prefix + given: str(tmp_path / "x.pem")})
    both = {"EDGE_APP_CAPTURE_DICOM_TLS_CERT": "c.pem", "EDGE_APP_CAPTURE_DICOM_TLS_KEY": "k.pem"}
    assert load_settings(environ={**both, "EDGE_APP_CAPTURE_DICOM_TLS_CA": "ca.pem"}).capture.dicom.tls_ca == Path(
        "ca.pem"
    )
    with pytest.raises(ConfigError, match="tls_ca needs tls_cert and tls_key"):
        load_settings(environ={"EDGE_APP_CAPTURE_DICOM_TLS_CA": "ca.pem"})


def test_a_signature_requirement_needs_a_trusted_key() -> None:
    with pytest.raises(ConfigError, match="require_signature needs at least one entry in trusted_keys"):
        load_settings(environ={"EDGE_APP_MODEL_REQUIRE_SIGNATURE": "true"})
    env = {"EDGE_APP_MODEL_REQUIRE_SIGNATURE": "true", "EDGE_APP_MODEL_TRUSTED_KEYS": "/keys"}
    assert load_settings(environ=env).model.trusted_keys == [Path("/keys")]


def test_a_watched_folder_needs_its_path() -> None:
    with pytest.raises(ConfigError, match="a watched folder needs its path"):
        load_settings(environ={"EDGE_APP_CAPTURE_FOLDER_ENABLED": "true"})
    assert load_settings(environ={"EDGE_APP_CAPTURE_FOLDER_ENABLED": "false"}).capture.folder.path is None


def test_a_destination_port_at_its_limits() -> None:
    for port, ok in ((1, True), (65535, True), (0, False), (65536, False)):
        value = f'[{{ ae_title = "PACS", host = "10.0.0.2", port = {port} }}]'
        if ok:
            assert load_settings(environ={"EDGE_APP_OUTPUTS_DESTINATIONS": value}).outputs.destinations[0].port == port
        else:
            with pytest.raises(ConfigError, match=r"outputs\.destinations\.0\.port"):
                load_settings(environ={"EDGE_APP_OUTPUTS_DESTINATIONS": value})


def test_seconds_are_numbers_not_strings(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[imaging]\ndecode_timeout_s = "30"\n')
    with pytest.raises(ConfigError, match=r"imaging\.decode_timeout_s: Input should be a valid number"):
        load_settings(cfg, environ={})


def test_configured_tls_files_are_the_ones_served(tmp_path: Path) -> None:
    env = {"EDGE_APP_SERVER_TLS_CERT": "/etc/edge-app/c.pem", "EDGE_APP_SERVER_TLS_KEY": "/etc/edge-app/k.pem"}
    settings = load_settings(environ={**env, "EDGE_APP_STORAGE_DATA_DIR": str(tmp_path)})
    assert settings.tls_files == (Path("/etc/edge-app/c.pem"), Path("/etc/edge-app/k.pem"))
    assert not settings.tls, "configured, but not there"


def test_a_destination_s_port_is_dicom_s_own_unless_given() -> None:
    value = '[{ ae_title = "PACS", host = "10.0.0.2" }]'
    (destination,) = load_settings(environ={"EDGE_APP_OUTPUTS_DESTINATIONS": value}).outputs.destinations
    assert destination.port == 104 and destination.send == ["sr", "sc"]


def test_what_is_off_unless_asked_for() -> None:
    s = load_settings(environ={})
    assert s.capture.video.infer_every == 0 and s.storage.retention_days == 0 and s.storage.min_free_mb == 1024


def _load(tmp_path: Path, text: str) -> Any:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(text)
    return load_settings(cfg, environ={})


@pytest.mark.parametrize(
    ("url", "ssl", "refused"),
    [
        ("hub.clinic.lan:8000", False, True),  # a token in clear across the network
        ("hub.clinic.lan:8000", True, False),
        ("10.0.0.5:8001", False, True),
        ("127.0.0.1:8000", False, False),  # loopback: a TLS proxy on the box itself
        ("[::1]:8001", False, False),
        ("localhost:8000", False, False),
        ("", False, False),  # no hub: the token is never sent
    ],
)
def test_a_hub_token_never_crosses_the_network_in_clear(tmp_path: Path, url: str, ssl: bool, refused: bool) -> None:
    section = f'[model.triton]\nurl = "{url}"\nssl = {str(ssl).lower()}\n'
    if refused:
        with pytest.raises(ConfigError, match=r"model.triton.token would cross the network in clear: set model"):
            _load(tmp_path, section + 'token = "s3cret"\n')
    else:
        assert _load(tmp_path, section + 'token = "s3cret"\n').model.triton.token.get_secret_value() == "s3cret"
    assert _load(tmp_path, section).model.triton.url == url, "no token: nothing to protect"


def test_an_unknown_runner_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"model.runner: Value error, unknown runner 'onnxruntim'; choose one of auto,"
    ):
        _load(tmp_path, '[model]\nrunner = "onnxruntim"\n')
    for name in ("auto", "onnxruntime", "tensorrt"):
        assert _load(tmp_path, f'[model]\nrunner = "{name}"\n').model.runner == name


def test_the_triton_runner_needs_a_hub(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'runner = "triton" needs model.triton.url'):
        _load(tmp_path, '[model]\nrunner = "triton"\n')
    settings = _load(tmp_path, '[model]\nrunner = "triton"\n[model.triton]\nurl = "hub.clinic.lan:8001"\n')
    assert settings.model.runner == "triton" and settings.model.triton.url == "hub.clinic.lan:8001"


def test_the_clinic_s_time_zone_is_an_iana_name_checked_at_start(tmp_path: Path) -> None:
    """site.timezone: an IANA name the machine knows, else the service does not start (a plain-words error)."""
    assert load_settings(environ={"EDGE_APP_SITE_TIMEZONE": "Africa/Nairobi"}).site.timezone == "Africa/Nairobi"
    assert load_settings(environ={}).site.timezone == "UTC"
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        load_settings(environ={"EDGE_APP_SITE_TIMEZONE": "Mars/Olympus"})


def test_the_configuration_file_read_without_config(tmp_path: Path) -> None:
    """EDGE_APP_CONFIG names it; else the appliance's own file where it exists; else none (the defaults)."""
    from edge_app.config import default_config

    appliance = tmp_path / "edge-app.toml"
    assert default_config({}, appliance) is None, "no file: the defaults"
    appliance.write_text("")
    assert default_config({}, appliance) == appliance
    assert default_config({"EDGE_APP_CONFIG": str(tmp_path / "other.toml")}, appliance) == tmp_path / "other.toml"
    assert default_config({"EDGE_APP_CONFIG": ""}, appliance) == appliance


def test_the_tests_read_a_configuration_of_their_own(own_config: Path) -> None:
    """Whatever the shell running the tests holds (test_cli runs this under a hostile one): the session's own
    empty file, no EDGE_APP_* setting, the defaults."""
    assert default_config() == own_config
    assert [k for k in os.environ if k.startswith(ENV_PREFIX)] == [CONFIG_ENV]
    assert load_settings(default_config()) == load_settings(environ={})
