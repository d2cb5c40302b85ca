"""Typed settings: one TOML file, documented defaults, `EDGE_APP_<SECTION>_<KEY>` environment overrides.

Validated at start; an invalid or insecure configuration stops the service with a plain-words error.
"""

from __future__ import annotations

import ipaddress
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_app.errors import ConfigError, format_validation_error
from edge_app.system.fileio import read_toml, toml_value

ENV_PREFIX = "EDGE_APP_"
MIN_SECRET_CHARS = 32
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
EMBEDDED_BUNDLE = Path(__file__).parent / "bundles" / "cxr-reference"
RUNNER_NAMES = ("auto", "onnxruntime", "tensorrt", "triton")
# Read where no --config is given: the file the environment names, else the appliance's own where it exists.
CONFIG_ENV = "EDGE_APP_CONFIG"
APPLIANCE_CONFIG = Path("/etc/edge-app/edge-app.toml")


def check_host(host: str) -> str:
    if not is_host(host):
        raise ValueError(f"{host!r} is not an IP address or a host name")
    return host


def check_ae_title(title: str) -> str:
    if not 0 < len(title.strip()) <= 16 or "\\" in title or not title.isprintable() or not title.isascii():
        raise ValueError(f"{title!r} is not an AE title (1 to 16 printable ASCII characters, no backslash)")
    return title


Host = Annotated[str, AfterValidator(check_host)]  # an IP address or a host name
AETitle = Annotated[str, AfterValidator(check_ae_title)]  # a DICOM Application Entity title


def default_data_dir() -> Path:
    """Per-user data directory: $XDG_DATA_HOME/edge-app, else ~/.local/share/edge-app."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edge-app"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    """The web service: the tablets' pages and the JSON API."""

    host: Host = Field(
        "127.0.0.1", description="address to bind; anything but loopback needs TLS and at least one user, or no start"
    )
    port: StrictInt = Field(8080, ge=1, le=65535, description="the web service's port (HTTP, or HTTPS with TLS)")
    secret_key: str = Field(
        "", description="signs sessions, at least 32 characters; empty: a random one kept in <data_dir>/secret_key"
    )
    tls_cert: Path | None = Field(
        None,
        description="PEM certificate for HTTPS; default <data_dir>/tls/cert.pem where it exists (edge-app tls init)",
        examples=["/etc/edge-app/tls/cert.pem"],
    )
    tls_key: Path | None = Field(
        None,
        description="PEM private key of tls_cert; default <data_dir>/tls/key.pem where it exists",
        examples=["/etc/edge-app/tls/key.pem"],
    )
    idle_logout_min: StrictInt = Field(
        15,
        ge=1,
        le=1440,
        description="a tablet left untouched this long is logged out (its page refreshing doesn't count)",
    )
    login_attempts: StrictInt = Field(5, ge=1, le=100, description="failed logins per user name and per address ...")
    login_lockout_min: StrictInt = Field(
        15,
        ge=1,
        le=1440,
        description="... within this window; then every login, even a right one, is refused until it passes",
    )
    login_delay_s: float = Field(
        1.0,
        ge=0,
        le=60,
        strict=True,
        description="per account: after its n-th failure in a row a login waits this x 2^(n-1) s, at most 60 (0: off)",
    )
    audit_window_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        strict=True,
        description="the same read by the same person from the same address: one audit row per window",
    )
    audit_rows_per_window: StrictInt = Field(
        60, ge=1, le=100_000, description="at most this many read (refused-login) rows per person (address) per window"
    )
    language: Literal["en", "fr"] = Field(
        "en", description="en or fr: the login page's language and new users' default"
    )
    max_upload_mb: StrictInt = Field(200, ge=1, le=4096, description="largest image upload accepted")
    result_wait_s: float = Field(
        60.0, ge=0, le=3600, strict=True, description="how long POST /studies waits for the result (then 202)"
    )
    threads: StrictInt = Field(32, ge=2, le=256, description="request-handling threads (2-256)")
    max_connections_per_peer: StrictInt = Field(
        16,
        ge=1,
        le=255,
        description="requests one address may have in hand at once (idle connections not counted; two browsers "
        "open 12); more are answered 503 with Retry-After; fewer than threads",
    )
    header_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        strict=True,
        description="a connection's TLS handshake, and each request's head, arrive within this or it is closed",
    )

    @model_validator(mode="after")
    def _tls(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @model_validator(mode="after")
    def _threads_for_others(self) -> ServerSettings:
        if self.max_connections_per_peer >= self.threads:
            raise ValueError(
                f"max_connections_per_peer ({self.max_connections_per_peer}) must be fewer than threads "
                f"({self.threads}): one address would otherwise hold them all"
            )
        return self

    @field_validator("secret_key")
    @classmethod
    def _secret(cls, key: str) -> str:
        if key and not is_strong_secret(key):
            raise ValueError(
                f"must be at least {MIN_SECRET_CHARS} characters, not counting spaces at either end, "
                "with at least 8 different ones (or empty, when serving only this machine)"
            )
        return key


class StorageSettings(_Section):
    """The database and the stored files."""

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="edge-app.sqlite3 and files/; default $XDG_DATA_HOME/edge-app, else ~/.local/share/edge-app",
        examples=["/var/lib/edge-app"],
    )
    min_free_mb: StrictInt = Field(
        1024,
        ge=0,
        le=1_000_000,
        description="below this much free disk new images are refused (API 507, C-STORE 0xA700; 0: never)",
    )
    retention_days: StrictInt = Field(
        0,
        ge=0,
        le=36500,
        description="older images have their files removed (every 6 h); results, heatmaps, reviews stay (0: never)",
    )


class TritonSettings(_Section):
    """A Triton Inference Server (a district hub) that runs the bundle for this box (`model.runner = "triton"`)."""

    url: str = Field("", description='the hub\'s host:port (HTTP 8000, gRPC 8001); required for runner = "triton"')
    protocol: Literal["http", "grpc"] = Field("http", description="http or grpc")
    timeout_s: float = Field(
        5.0, gt=0, le=600, strict=True, description="a request to the hub taking longer runs on the box's own runner"
    )
    retry_s: float = Field(
        30.0, gt=0, le=3600, strict=True, description="while the hub is away, how often it is tried again"
    )
    ssl: StrictBool = Field(False, description="TLS to the hub (or to the proxy in front of it)")
    ca_file: Path | None = Field(
        None, description="certificate authority for the hub's certificate", examples=["/etc/edge-app/hub-ca.pem"]
    )
    model: str = Field("", description="the hub's model name; default: the bundle's name (<name>_tensorrt: engine)")
    token: SecretStr = Field(
        SecretStr(""),
        description="sent in token_header where the hub restricts access (refused in clear off loopback)",
    )
    token_header: str = Field("triton-access-token", description="the header Triton's restricted API checks")

    @model_validator(mode="after")
    def _token_in_clear(self) -> TritonSettings:
        host = self.url.rsplit(":", 1)[0].strip("[]")
        if self.token.get_secret_value() and not self.ssl and host and not is_loopback(host):
            raise ValueError("model.triton.token would cross the network in clear: set model.triton.ssl = true")
        return self


class ModelSettings(_Section):
    """The models: bundles, the runner, TensorRT engines, signatures."""

    bundle: Path = Field(
        EMBEDDED_BUNDLE,
        description="model bundle directory; default: the embedded reference bundle (edge_app/bundles/cxr-reference)",
        examples=["/var/lib/edge-app/models/my-model"],
    )
    extra_bundles: list[Path] = Field(
        default_factory=list, description="more bundles: each image goes to every bundle whose intended use fits it"
    )
    runner: str = Field(
        "auto",
        description=f"{' | '.join(RUNNER_NAMES)}; auto: TensorRT where this GPU has a cached engine, else ONNX Runtime",
    )
    threads: StrictInt = Field(0, ge=0, le=64, description="inference threads; 0 lets ONNX Runtime use every core")
    engine_cache: Path | None = Field(
        None,
        description="TensorRT engines, keyed by bundle, TensorRT version and GPU; default <storage.data_dir>/engines",
        examples=["/var/lib/edge-app/engines"],
    )
    max_batch: StrictInt = Field(8, ge=1, le=256, description="largest batch a TensorRT engine is built for")
    build_engine_at_start: StrictBool = Field(
        True, description="with TensorRT but no cached engine: build it in the background, ONNX Runtime meanwhile"
    )
    dla_core: StrictInt | None = Field(
        None,
        ge=0,
        le=7,
        description="run engines on this DLA core (fp16/int8 bundles; a DLA engine has one batch size: max_batch)",
        examples=[0],
    )
    engine_build_memory_mb: StrictInt = Field(
        2048,
        ge=512,
        le=1_000_000,
        description="an engine build (a process of its own) using more host memory than this is stopped",
    )
    engine_build_timeout_s: StrictInt = Field(1800, ge=60, le=86400, description="and one taking longer than this")
    require_signature: StrictBool = Field(False, description="accept only bundles signed by one of trusted_keys")
    trusted_keys: list[Path] = Field(
        default_factory=list, description="Ed25519 public keys (PEM files, or folders of *.pub / *.pem)"
    )
    import_dir: Path | None = Field(
        None,
        description="bundles found here (and one folder down) are offered on the admin page (a USB stick's mount)",
        examples=["/media/edge-import"],
    )
    triton: TritonSettings = Field(default_factory=TritonSettings)

    @field_validator("runner")
    @classmethod
    def _known_runner(cls, value: str) -> str:
        if value not in RUNNER_NAMES:
            raise ValueError(f"unknown runner {value!r}; choose one of {', '.join(RUNNER_NAMES)}")
        return value

    @model_validator(mode="after")
    def _keys(self) -> ModelSettings:
        if self.require_signature and not self.trusted_keys:
            raise ValueError("require_signature needs at least one entry in trusted_keys")
        if self.runner == "triton" and not self.triton.url:
            raise ValueError('runner = "triton" needs model.triton.url (the hub\'s host:port)')
        return self


class ImagingSettings(_Section):
    """Decoding: the limits on one image and the decoder processes."""

    max_pixels: StrictInt = Field(
        25_000_000, ge=1, description="5000 x 5000; larger images are refused from their header, before decoding"
    )
    max_decode_mb: StrictInt = Field(
        320, ge=16, le=65536, description="decoding memory one image may need (estimated before, enforced during)"
    )
    decode_timeout_s: float = Field(
        30.0, gt=0, le=3600, strict=True, description="an image that takes longer to decode is stopped and refused"
    )
    decoders: StrictInt = Field(
        0,
        ge=0,
        le=16,
        description="decoder processes, each may take max_decode_mb + 100 MB; 0: one per core but one, as the "
        "memory allows (a 6-core 8 GB Jetson: 3 in its unit)",
    )
    frame: Literal["first", "middle", "last"] = Field(
        "middle", description="first, middle or last: the frame taken from a multi-frame image"
    )


class WorkerSettings(_Section):
    """The inference worker."""

    lease_s: float = Field(
        600.0, gt=0, le=86400, strict=True, description="a job held this long by a worker that died is taken again"
    )
    max_attempts: StrictInt = Field(
        3, ge=1, le=100, description="then an image that kills the worker fails, with the reason"
    )
    idle_s: float = Field(
        30.0, gt=0, le=3600, strict=True, description="an idle queue is looked at this often (besides each wake-up)"
    )
    burst: StrictInt = Field(
        8,
        ge=1,
        le=64,
        description="queued images begun at once: decoded side by side, each recorded as soon as it is "
        "diagnosed, those prepared together inferred in one batch where the model takes batches",
    )
    behind_s: float = Field(
        120.0,
        gt=0,
        le=86400,
        strict=True,
        description="the tablet says the worker is behind when an image has waited this long for a model",
    )


class DicomCaptureSettings(_Section):
    """The DICOM receiver (C-STORE and C-ECHO SCP) the X-ray or ultrasound unit sends its images to."""

    enabled: StrictBool = Field(False, description="listen for DICOM associations")
    ae_title: AETitle = Field("EDGEAPP", description="this appliance's AE title, as configured on the modality")
    host: Host = Field("0.0.0.0", description="address to listen on")
    port: StrictInt = Field(11112, ge=1, le=65535, description="the DICOM port to listen on")
    allowed_ae_titles: list[AETitle] = Field(default_factory=list, description="calling AE titles let in; [] = any")
    allowed_addresses: list[str] = Field(
        default_factory=list,
        description='peer addresses or networks ("192.168.1.0/24"); [] = any',
        examples=[["192.168.1.0/24"]],
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate: with tls_key, DICOM over TLS", examples=["/etc/edge-app/tls/edgeapp.pem"]
    )
    tls_key: Path | None = Field(
        None, description="PEM private key of tls_cert", examples=["/etc/edge-app/tls/edgeapp.key"]
    )
    tls_ca: Path | None = Field(
        None,
        description="PEM CA bundle: peers must present a certificate it signed",
        examples=["/etc/edge-app/tls/clinic-ca.pem"],
    )
    any_called_ae_title: StrictBool = Field(
        False, description="accept associations whatever AE title the peer calls (false: only ae_title)"
    )
    max_associations: StrictInt = Field(16, ge=1, le=1000, description="associations open at once, in all")
    max_associations_per_address: StrictInt = Field(4, ge=1, le=1000, description="... and from one address")
    timeout_s: float = Field(
        30.0, gt=0, le=3600, strict=True, description="an association (or a TLS handshake) silent this long is dropped"
    )
    max_object_mb: StrictInt = Field(
        512, ge=1, le=65536, description="a larger data set aborts its association; nothing of it is kept"
    )
    max_refused_per_min: StrictInt = Field(
        20, ge=0, le=100_000, description="a peer refused more often waits longer for each answer (0: never)"
    )

    @field_validator("allowed_addresses")
    @classmethod
    def _networks(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address or network (192.168.1.20, 10.0.0.0/24)") from None
        return addresses

    @model_validator(mode="after")
    def _tls(self) -> DicomCaptureSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca needs tls_cert and tls_key")
        return self


class FolderCaptureSettings(_Section):
    """A folder (a network share, a USB stick's mount point) images are dropped into."""

    enabled: StrictBool = Field(False, description="watch the folder")
    path: Path | None = Field(
        None,
        description="the folder, required when enabled; done/ and failed/ are made inside it",
        examples=["/media/edge-import"],
    )
    poll_s: float = Field(2.0, gt=0, le=600, strict=True, description="how often the folder is looked at")
    stable_s: float = Field(2.0, ge=0, le=600, strict=True, description="a file unchanged this long is complete")

    @model_validator(mode="after")
    def _path(self) -> FolderCaptureSettings:
        if self.enabled and self.path is None:
            raise ValueError("a watched folder needs its path")
        return self


class SerialCaptureSettings(_Section):
    """Serial devices: X-ray generators, footswitches, barcode readers (see firmware_config/devices/)."""

    profiles: list[Path] = Field(
        default_factory=list,
        description="device profiles (TOML), one per device",
        examples=[["/etc/edge-app/devices/xray-generator.toml"]],
    )
    exposure_window_s: float = Field(
        30.0, gt=0, le=3600, strict=True, description="an exposure report goes to the next image arriving within this"
    )


class VideoCaptureSettings(_Section):
    """An ultrasound video feed (OpenCV)."""

    enabled: StrictBool = Field(False, description="read the video feed")
    source: str = Field(
        "/dev/video0", description="a USB HDMI grabber (V4L2), a device number, or any file or URL OpenCV opens"
    )
    modality: str = Field("US", description="captured frames are stored as DICOM images of this modality")
    reconnect_s: float = Field(
        2.0, gt=0, le=600, strict=True, description="when the grabber goes away, it is opened again this often"
    )
    loop_file: StrictBool = Field(False, description="play a file source again when it ends (demonstrations)")
    infer_every: StrictInt = Field(0, ge=0, le=10000, description="live inference on every Nth frame; 0 = off")


class CaptureSettings(_Section):
    """The ways images come in besides the API."""

    dicom: DicomCaptureSettings = Field(default_factory=DicomCaptureSettings)
    folder: FolderCaptureSettings = Field(default_factory=FolderCaptureSettings)
    serial: SerialCaptureSettings = Field(default_factory=SerialCaptureSettings)
    video: VideoCaptureSettings = Field(default_factory=VideoCaptureSettings)


def _both_documents() -> list[Literal["sr", "sc"]]:
    return ["sr", "sc"]


class Destination(_Section):
    """A DICOM node results are sent to: the modality itself, a PACS."""

    ae_title: AETitle
    host: Host
    port: StrictInt = Field(104, ge=1, le=65535)
    send: list[Literal["sr", "sc"]] = Field(default_factory=_both_documents, description="what it gets")

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class OutputSettings(_Section):
    """Results sent back by C-STORE: a Structured Report of the findings, a Secondary Capture with the heatmap."""

    destinations: list[Destination] = Field(
        default_factory=list,
        description="where results go; [] = nowhere",
        examples=[[{"ae_title": "PACS", "host": "192.168.1.10", "port": 104, "send": ["sr", "sc"]}]],
    )
    calling_ae_title: AETitle = Field("EDGEAPP", description="this appliance's AE title when it sends")

    retry_s: float = Field(
        30.0, gt=0, le=86400, strict=True, description="first wait after a failed send; doubles up to 32x"
    )
    max_attempts: StrictInt = Field(
        20, ge=1, le=1000, description="then the item is kept as failed, with the reason, until someone re-sends it"
    )
    connect_timeout_s: float = Field(
        3.0, gt=0, le=600, strict=True, description="a destination that does not take the connection in this long fails"
    )
    answer_timeout_s: float = Field(
        10.0, gt=0, le=3600, strict=True, description="... and one silent this long in an association (each answer)"
    )
    per_association: StrictInt = Field(
        50, ge=1, le=10000, description="at most this many objects sent in one association to a destination"
    )
    backlog_age_s: float = Field(
        900.0, gt=0, strict=True, description="/api/v1/health says degraded when an item waits longer than this"
    )
    backlog_count: StrictInt = Field(200, ge=1, description="... or when more items than this wait")


def check_timezone(name: str) -> str:
    """An IANA time zone name this machine knows (its tz database)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone this machine knows (an IANA name: Africa/Nairobi)") from None
    return name


class SiteSettings(_Section):
    """The clinic the appliance serves."""

    timezone: Annotated[str, AfterValidator(check_timezone)] = Field(
        "UTC", description='the clinic\'s time zone (IANA name, "Africa/Nairobi"): times on the tablet are shown in it'
    )


class MonitoringSettings(_Section):
    """The model watched in the field: agreement by patient group against its validation; drift by station."""

    adult_from_years: float = Field(
        18.0, strict=True, gt=0, description="a patient of this age or more is an adult (else a child)"
    )
    older_from_years: float = Field(
        65.0, strict=True, gt=0, description="a patient of this age or more is an older adult"
    )
    margin: float = Field(
        0.10,
        strict=True,
        gt=0,
        le=1,
        description="a figure this much worse than the bundle's validation (a share, 0.10: 10 points) is flagged",
    )
    min_reviews: StrictInt = Field(
        30, ge=1, description="reviewed findings a figure needs before it is compared (fewer: 'too few reviews')"
    )
    min_group_size: StrictInt = Field(
        10, ge=1, description="a group of fewer images is shown without its figures (none singles out a patient)"
    )
    every_s: float = Field(
        600.0, strict=True, gt=0, description="how often the figures are counted and the flags settled"
    )
    drift_window: StrictInt = Field(
        100,
        ge=10,
        description="drift: a station's latest this many images are compared with the bundle's fingerprint and with "
        "the station's earlier images (a station with fewer is not judged yet)",
    )
    drift_alpha: float = Field(
        0.001,
        strict=True,
        gt=0,
        lt=1,
        description="drift: the significance of the one-sided two-sample Kolmogorov-Smirnov test of the window's "
        "input guard scores against the fingerprint's (small: the test is repeated every round)",
    )
    drift_intensity: float = Field(
        0.15,
        strict=True,
        gt=0,
        le=1,
        description="drift: the window's mean intensity histogram this far from the fingerprint's (total variation) "
        "is flagged; windows of 30-60 steady NIH images measured 0.02-0.07, inverted or re-windowed ones 0.24-0.34",
    )
    drift_rise: float = Field(
        0.10,
        strict=True,
        gt=0,
        le=1,
        description="drift: a window's share refused by the guard, or found positive, this much above the station's "
        "earlier share (0.10: 10 points), its 95 % interval wholly above it, is flagged",
    )

    @model_validator(mode="after")
    def _bands(self) -> MonitoringSettings:
        if self.older_from_years <= self.adult_from_years:
            raise ValueError("older_from_years must be above adult_from_years")
        return self


class Settings(_Section):
    site: SiteSettings = Field(default_factory=SiteSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    imaging: ImagingSettings = Field(default_factory=ImagingSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)

    @property
    def engine_cache(self) -> Path:
        return self.model.engine_cache or self.storage.data_dir / "engines"

    @property
    def tls_files(self) -> tuple[Path, Path]:
        """(certificate, key) the server uses where both exist: the configured ones, else `edge-app tls init`'s."""
        if self.server.tls_cert is not None and self.server.tls_key is not None:
            return self.server.tls_cert, self.server.tls_key
        return self.storage.data_dir / "tls" / "cert.pem", self.storage.data_dir / "tls" / "key.pem"

    @property
    def tls(self) -> bool:
        return all(path.is_file() for path in self.tls_files)


def default_config(environ: Mapping[str, str] | None = None, appliance: Path = APPLIANCE_CONFIG) -> Path | None:
    """The configuration file a command reads when none is given: `EDGE_APP_CONFIG`'s, else the appliance's
    (`/etc/edge-app/edge-app.toml`) where it exists, else none (the defaults)."""
    named = (os.environ if environ is None else environ).get(CONFIG_ENV)
    if named:
        return Path(named)
    return appliance if appliance.is_file() else None


def load_settings(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), apply environment overrides, validate; raise `ConfigError` in plain words.
    Whether the settings are safe to serve with is `check_secure`'s question, asked by `Service`."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(Path(path), f"configuration file {path}", ConfigError)
    _apply_environment(raw, os.environ if environ is None else environ)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {format_validation_error(exc)}") from None
    return settings


def with_overrides(settings: Settings, section: str, values: Mapping[str, Any]) -> Settings:
    """`settings` with some keys of one section replaced (command-line options; None leaves a key alone),
    validated like the file; raise `ConfigError` in plain words."""
    raw = settings.model_dump()
    raw[section].update({key: value for key, value in values.items() if value is not None})
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {format_validation_error(exc)}") from None


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """EDGE_APP_<SECTION>_<KEY>, and EDGE_APP_<SECTION>_<SUBSECTION>_<KEY> for nested tables ([capture.dicom])."""
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            _set_from_environment(raw, Settings, key[len(ENV_PREFIX) :].lower(), value, key)


def _set_from_environment(raw: dict[str, Any], model: type[BaseModel], rest: str, value: str, key: str) -> None:
    tables = {name: f for name, f in model.model_fields.items() if _is_section(f.annotation)}
    table = next((t for t in tables if rest.startswith(t + "_")), None)
    if table is not None:
        sub = raw.setdefault(table, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"[{table}] in the configuration file must be a table")
        annotation = tables[table].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        _set_from_environment(sub, annotation, rest[len(table) + 1 :], value, key)
        return
    if model is Settings:
        return  # EDGE_APP_CONFIG and other names outside the settings
    if rest not in model.model_fields:
        raise ConfigError(f"environment variable {key} names no setting ({rest!r} is not one)")
    raw[rest] = _environment_value(model.model_fields[rest].annotation, value)


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, _Section)


def _environment_value(annotation: Any, value: str) -> Any:
    """An environment string as the setting's type: numbers and booleans as TOML writes them, lists as a TOML
    array or comma-separated; anything unparsable stays a string for the validator to refuse in plain words."""
    origin = typing.get_origin(annotation)
    if origin is list:
        if value.lstrip().startswith("["):
            return toml_value(value)
        return [item.strip() for item in value.split(",") if item.strip()]
    if annotation in (int, float, bool):
        return toml_value(value)
    return value


def check_secure(settings: Settings) -> None:
    """Refuse to serve beyond this machine without TLS (users are checked once the store is open: `Service`)."""
    server = settings.server
    if is_loopback(server.host):
        return
    if server.tls_cert is not None and server.tls_key is not None:
        missing = [str(p) for p in (server.tls_cert, server.tls_key) if not p.is_file()]
        if missing:
            raise ConfigError(f"refusing to listen on {server.host}: TLS file(s) not found: {', '.join(missing)}")
    elif not settings.tls:
        raise ConfigError(
            f"refusing to listen on {server.host}: serving beyond this machine needs TLS: run `edge-app tls init` "
            "for a self-signed certificate, or set server.tls_cert and server.tls_key"
        )


def is_strong_secret(key: str) -> bool:
    return len(key.strip()) >= MIN_SECRET_CHARS and len(set(key)) >= 8


def is_host(host: str) -> bool:
    """An IP address, or a host name of RFC 1123 labels."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    return 0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
