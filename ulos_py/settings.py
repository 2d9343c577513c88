"""Typed node settings from the SPEC §6 environment variables, every default in one place.

Operators' existing files use exactly the MESSAGE_BROKER_* and REMOTE_STORAGE_* names; what
ulos-py adds is prefixed ULOS_. Variables in the environment win over an --env-file, so a
one-off override needs no edited file.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Self, TypeVar

from pydantic import BeforeValidator, Field, FilePath, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ulos_py.errors import ConfigError

PositiveInt = Annotated[int, Field(ge=1)]
Port = Annotated[int, Field(ge=1, le=65535)]
OptionalPort = Annotated[
    int, BeforeValidator(lambda value: 0 if value == "" else value), Field(ge=0, le=65535)
]
"""A port, or 0 (or an empty value) for "off"."""
OptionalFile = Annotated[FilePath | None, BeforeValidator(lambda value: value or None)]
"""An existing file, or nothing (an empty value too)."""


@dataclass(frozen=True)
class TlsOptions:
    """TLS towards one server: whose certificates to trust, whether to check them (chain and
    host name), and the client's own certificate if the server asks for one.

    `variable` is the switch's name (MESSAGE_BROKER_TLS), so errors name the bad file's.
    """

    variable: str
    ca_file: Path | None = None
    verify: bool = True
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """A client context; ConfigError names the variable whose file is unusable."""
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except OSError as exc:  # ssl.SSLError too
            raise ConfigError(
                f"{self.variable}_CA_FILE: {self.ca_file} holds no usable PEM CA certificate "
                f"({_reason(exc)})"
            ) from exc
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError(f"{self.variable}_KEY_FILE: set without {self.variable}_CERT_FILE")
        if self.cert_file is not None:
            try:
                # No passphrase: an encrypted key fails here instead of prompting on a tty.
                context.load_cert_chain(self.cert_file, self.key_file, password=lambda: b"")
            except OSError as exc:
                raise ConfigError(
                    f"{self.variable}_CERT_FILE: {self.cert_file} and its unencrypted key "
                    f"({self.variable}_KEY_FILE, or the same file) do not load ({_reason(exc)})"
                ) from exc
        return context


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return exc.strerror or str(exc)


class ConnectionSettings(BaseSettings):
    """Where the broker and the storage are: all that the operator commands need."""

    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", frozen=True, populate_by_name=True
    )

    broker_host: str = Field("localhost", alias="MESSAGE_BROKER_HOST")
    broker_port: Port = Field(5672, alias="MESSAGE_BROKER_PORT")
    broker_username: str = Field("guest", alias="MESSAGE_BROKER_USERNAME")
    broker_password: SecretStr = Field(SecretStr("guest"), alias="MESSAGE_BROKER_PASSWORD")
    storage_host: str = Field("localhost", alias="REMOTE_STORAGE_HOST")
    storage_port: Port = Field(21, alias="REMOTE_STORAGE_PORT")
    storage_username: str = Field("anonymous", alias="REMOTE_STORAGE_USERNAME")
    storage_password: SecretStr = Field(SecretStr(""), alias="REMOTE_STORAGE_PASSWORD")
    broker_tls: bool = Field(False, alias="MESSAGE_BROKER_TLS")
    broker_tls_ca_file: OptionalFile = Field(None, alias="MESSAGE_BROKER_TLS_CA_FILE")
    broker_tls_verify: bool = Field(True, alias="MESSAGE_BROKER_TLS_VERIFY")
    broker_tls_cert_file: OptionalFile = Field(None, alias="MESSAGE_BROKER_TLS_CERT_FILE")
    broker_tls_key_file: OptionalFile = Field(None, alias="MESSAGE_BROKER_TLS_KEY_FILE")
    storage_tls: bool = Field(False, alias="REMOTE_STORAGE_TLS")
    storage_tls_ca_file: OptionalFile = Field(None, alias="REMOTE_STORAGE_TLS_CA_FILE")
    storage_tls_verify: bool = Field(True, alias="REMOTE_STORAGE_TLS_VERIFY")

    @property
    def broker_tls_options(self) -> TlsOptions | None:
        """How to speak AMQPS to the broker; None for plain AMQP."""
        if not self.broker_tls:
            return None
        return TlsOptions(
            "MESSAGE_BROKER_TLS",
            self.broker_tls_ca_file,
            self.broker_tls_verify,
            self.broker_tls_cert_file,
            self.broker_tls_key_file,
        )

    @property
    def storage_tls_options(self) -> TlsOptions | None:
        """How to speak explicit FTPS to the storage; None for plain FTP."""
        if not self.storage_tls:
            return None
        return TlsOptions("REMOTE_STORAGE_TLS", self.storage_tls_ca_file, self.storage_tls_verify)

    @model_validator(mode="after")
    def _tls_usable(self) -> Self:
        """TLS files load now, so a bad one stops the start; a file set while its TLS is off
        is refused, since the operator meant TLS and would silently get plain text."""
        for switch, on, files in (
            (
                "MESSAGE_BROKER_TLS",
                self.broker_tls,
                {
                    "CA_FILE": self.broker_tls_ca_file,
                    "CERT_FILE": self.broker_tls_cert_file,
                    "KEY_FILE": self.broker_tls_key_file,
                },
            ),
            ("REMOTE_STORAGE_TLS", self.storage_tls, {"CA_FILE": self.storage_tls_ca_file}),
        ):
            for suffix, path in files.items():
                if path is not None and not on:
                    raise ConfigError(
                        f"{switch}_{suffix}: set, but {switch} is not true (set {switch}=true "
                        "to use TLS, or leave the file out)"
                    )
        for options in (self.broker_tls_options, self.storage_tls_options):
            if options is not None:
                options.context()
        return self


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(ConnectionSettings):
    """Everything a node reads at start; a bad value stops it with one line."""

    logs_exchange: str = Field(alias="MESSAGE_BROKER_LOGS_EXCHANGE")
    logs_routing_key: str = Field(alias="MESSAGE_BROKER_LOGS_ROUTING_KEY")
    crash_exchange: str = Field(alias="MESSAGE_BROKER_CRASH_EXCHANGE")
    crash_routing_key: str = Field(alias="MESSAGE_BROKER_CRASH_ROUTING_KEY")
    consumption_queue: Annotated[str, Field(min_length=1)] = Field(
        alias="MESSAGE_BROKER_CONSUMPTION_QUEUE"
    )
    prefetch_count: Annotated[int, Field(ge=0, le=65535)] = Field(
        10, alias="MESSAGE_BROKER_PREFETCH_COUNT"
    )
    requeue_on_reject: bool = Field(False, alias="MESSAGE_BROKER_REQUEUE_ON_REJECT")
    max_deliveries: Annotated[int, Field(ge=1)] = Field(5, alias="ULOS_MAX_DELIVERIES")

    configured_node_id: str | None = Field(None, alias="ULOS_NODE_ID")
    processes: PositiveInt = Field(default_factory=usable_cores, alias="ULOS_PROCESSES")
    work_dir: Path = Field(Path(tempfile.gettempdir()) / "ulos-py", alias="ULOS_WORK_DIR")
    max_in_flight: PositiveInt = Field(16, alias="ULOS_MAX_IN_FLIGHT")
    executors_file: Path = Field(Path("executors/registry.toml"), alias="ULOS_EXECUTORS_FILE")
    shutdown_grace: Annotated[float, Field(ge=0)] = Field(30.0, alias="ULOS_SHUTDOWN_GRACE")
    storage_retries: Annotated[int, Field(ge=0)] = Field(3, alias="ULOS_STORAGE_RETRIES")
    storage_retry_delay: Annotated[float, Field(ge=0)] = Field(
        0.5, alias="ULOS_STORAGE_RETRY_DELAY"
    )
    storage_connections: PositiveInt = Field(4, alias="ULOS_STORAGE_CONNECTIONS")
    archive_max_bytes: PositiveInt = Field(1 << 30, alias="ULOS_ARCHIVE_MAX_BYTES")
    archive_max_entries: PositiveInt = Field(10_000, alias="ULOS_ARCHIVE_MAX_ENTRIES")
    log_format: Literal["auto", "console", "json"] = Field("auto", alias="ULOS_LOG_FORMAT")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", alias="ULOS_LOG_LEVEL")
    event_loop: Literal["uvloop", "asyncio"] = Field("uvloop", alias="ULOS_EVENT_LOOP")
    """uvloop cuts the loop's own share of a task's CPU; `asyncio` is the standard loop."""
    metrics_port: OptionalPort = Field(0, alias="ULOS_METRICS_PORT")
    metrics_host: str = Field("127.0.0.1", alias="ULOS_METRICS_HOST")
    broker_consumer_timeout: Annotated[float, Field(ge=0)] = Field(
        1800.0, alias="ULOS_BROKER_CONSUMER_TIMEOUT"
    )
    """Seconds the broker lets a delivery go unacknowledged (RabbitMQ's `consumer_timeout`,
    30 min by default; 0: none). A task that may run longer is leased (see the README)."""
    lease_margin: Annotated[float, Field(ge=0)] = Field(300.0, alias="ULOS_LEASE_MARGIN")
    """Seconds a task needs besides its execution (download, upload, forward)."""

    @property
    def node_id(self) -> str:
        """ULOS_NODE_ID, or queue@host:pid, which stays unique per process.

        A worker of a multi-process node gets `ULOS_NODE_ID/w<index>:<pid>` when one is set.
        """
        host = socket.gethostname()
        return self.configured_node_id or f"{self.consumption_queue}@{host}:{os.getpid()}"

    @property
    def concurrency(self) -> int:
        """Tasks run at once: the prefetch count, or ULOS_MAX_IN_FLIGHT when it is 0."""
        return self.prefetch_count or self.max_in_flight


S = TypeVar("S", bound=ConnectionSettings)


def load_settings(env_file: Path | None = None) -> Settings:
    """The node's settings; ConfigError names the bad variable."""
    return load(Settings, env_file)


def load(kind: type[S], env_file: Path | None = None) -> S:
    """Settings from the environment (and an env file); ConfigError names the bad variable."""
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"--env-file {env_file}: no such file")
    try:
        return kind(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            given = "" if error["type"] == "missing" else f" (got {error['input']!r})"
            problems.append(f"{name}: {error['msg']}{given}")
        raise ConfigError("; ".join(problems)) from exc


def tls_refusal(exc: BaseException, who: str, prefix: str) -> ConfigError | None:
    """The ConfigError for a TLS handshake with `who` that failed (the ssl error itself, or
    the cause of a library's error), if that is what `exc` is: retrying cannot help, the
    settings (named by `prefix`, e.g. MESSAGE_BROKER) or the certificate must change."""
    cause = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return ConfigError(
            f"{who} showed a certificate that is not trusted ({cause.verify_message}): check "
            f"{prefix}_TLS_CA_FILE (the CA that signed it), {prefix}_HOST (a name the "
            f"certificate holds) or {prefix}_TLS_VERIFY"
        )
    if isinstance(cause, ssl.SSLError):
        reason = str(cause.reason or cause)
        check = (  # the server's alert about our certificate, e.g. CERTIFICATE_REQUIRED
            f"{prefix}_TLS_CERT_FILE and {prefix}_TLS_KEY_FILE (a client certificate it trusts)"
            if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason)
            else f"that {prefix}_PORT is its TLS port and {prefix}_TLS"
        )
        return ConfigError(f"TLS with {who} failed ({reason}): check {check}")
    return None
