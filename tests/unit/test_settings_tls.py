"""TLS settings and secret hygiene at start: files load at once, a bad combination is one
line naming the variable, and no password is ever part of a repr or an error."""

from __future__ import annotations

import os
import ssl
import uuid
from pathlib import Path

import pytest
import trustme

from ulos_py.adapters.ftp import FtpAddress
from ulos_py.adapters.rabbitmq import BrokerAddress
from ulos_py.errors import ConfigError
from ulos_py.settings import Settings, load_settings

BROKER_SECRET = f"s3cr3t-{uuid.uuid4().hex}"
STORAGE_SECRET = f"s3cr3t-{uuid.uuid4().hex}"
NODE_FILE = {
    "MESSAGE_BROKER_HOST": "rabbit.lab.example",
    "MESSAGE_BROKER_PORT": "5671",
    "MESSAGE_BROKER_PASSWORD": BROKER_SECRET,
    "MESSAGE_BROKER_LOGS_EXCHANGE": "logs",
    "MESSAGE_BROKER_LOGS_ROUTING_KEY": "logs",
    "MESSAGE_BROKER_CRASH_EXCHANGE": "crashes",
    "MESSAGE_BROKER_CRASH_ROUTING_KEY": "crash",
    "MESSAGE_BROKER_CONSUMPTION_QUEUE": "python-check",
    "REMOTE_STORAGE_PASSWORD": STORAGE_SECRET,
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("MESSAGE_BROKER_", "REMOTE_STORAGE_", "ULOS_")):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pems")
    ca = trustme.CA()
    client = ca.issue_cert("node.lab.example")
    files = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key", "both", "text")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(files["both"]))
    files["text"].write_text("not a certificate\n")
    return files


def load(tmp_path: Path, **values: object) -> Settings:
    path = tmp_path / "node.env"
    merged = {**NODE_FILE, **{name: str(value) for name, value in values.items()}}
    path.write_text("".join(f"export {name}={value}\n" for name, value in merged.items()))
    return load_settings(path)


def test_tls_is_off_by_default(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = load(tmp_path)

    assert settings.broker_tls_options is None
    assert settings.storage_tls_options is None
    assert BrokerAddress.of(settings, "n").tls is None
    assert FtpAddress.of(settings).tls is None


def test_tls_settings_reach_the_adapters(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, pems: dict[str, Path]
) -> None:
    settings = load(
        tmp_path,
        MESSAGE_BROKER_TLS="true",
        MESSAGE_BROKER_TLS_CA_FILE=pems["ca"],
        MESSAGE_BROKER_TLS_CERT_FILE=pems["cert"],
        MESSAGE_BROKER_TLS_KEY_FILE=pems["key"],
        REMOTE_STORAGE_TLS="true",
        REMOTE_STORAGE_TLS_CA_FILE=pems["ca"],
        REMOTE_STORAGE_TLS_VERIFY="false",
    )

    broker = BrokerAddress.of(settings, "n").tls
    storage = FtpAddress.of(settings).tls
    assert broker is not None
    assert (broker.ca_file, broker.verify) == (pems["ca"], True)
    assert (broker.cert_file, broker.key_file) == (pems["cert"], pems["key"])
    assert storage is not None
    assert (storage.ca_file, storage.verify) == (pems["ca"], False)
    checking = broker.context()
    assert checking.verify_mode == ssl.CERT_REQUIRED
    assert checking.check_hostname
    trusting = storage.context()
    assert trusting.verify_mode == ssl.CERT_NONE
    assert not trusting.check_hostname


def test_the_system_cas_when_no_ca_file_and_an_empty_value_is_none(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, pems: dict[str, Path]
) -> None:
    settings = load(
        tmp_path,
        MESSAGE_BROKER_TLS="true",
        MESSAGE_BROKER_TLS_CA_FILE="",
        MESSAGE_BROKER_TLS_CERT_FILE=pems["both"],  # key and certificate in one file
    )

    options = settings.broker_tls_options
    assert options is not None
    assert options.ca_file is None
    assert options.context().verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("values", "variable", "words"),
    [
        (
            {"MESSAGE_BROKER_TLS": "true", "MESSAGE_BROKER_TLS_CA_FILE": "/no/such/ca.pem"},
            "MESSAGE_BROKER_TLS_CA_FILE",
            ["/no/such/ca.pem"],
        ),
        (
            {"REMOTE_STORAGE_TLS": "true", "REMOTE_STORAGE_TLS_CA_FILE": "/no/such/ca.pem"},
            "REMOTE_STORAGE_TLS_CA_FILE",
            ["/no/such/ca.pem"],
        ),
        (
            {"REMOTE_STORAGE_TLS": "true", "REMOTE_STORAGE_TLS_CA_FILE": "{text}"},
            "REMOTE_STORAGE_TLS_CA_FILE",
            ["no usable PEM CA certificate"],
        ),
        (
            {"MESSAGE_BROKER_TLS_CA_FILE": "{ca}"},
            "MESSAGE_BROKER_TLS_CA_FILE",
            ["MESSAGE_BROKER_TLS is not true"],
        ),
        (
            {"REMOTE_STORAGE_TLS_CA_FILE": "{ca}"},
            "REMOTE_STORAGE_TLS_CA_FILE",
            ["REMOTE_STORAGE_TLS is not true"],
        ),
        (
            {"MESSAGE_BROKER_TLS": "true", "MESSAGE_BROKER_TLS_KEY_FILE": "{key}"},
            "MESSAGE_BROKER_TLS_KEY_FILE",
            ["without MESSAGE_BROKER_TLS_CERT_FILE"],
        ),
        (
            {"MESSAGE_BROKER_TLS": "true", "MESSAGE_BROKER_TLS_CERT_FILE": "{cert}"},
            "MESSAGE_BROKER_TLS_CERT_FILE",
            ["do not load"],
        ),
        ({"MESSAGE_BROKER_TLS": "perhaps"}, "MESSAGE_BROKER_TLS", ["perhaps"]),
        ({"REMOTE_STORAGE_TLS_VERIFY": "sometimes"}, "REMOTE_STORAGE_TLS_VERIFY", ["sometimes"]),
    ],
)
def test_a_bad_tls_setting_is_one_line_naming_the_variable(
    clean_env: pytest.MonkeyPatch,
    tmp_path: Path,
    pems: dict[str, Path],
    values: dict[str, str],
    variable: str,
    words: list[str],
) -> None:
    files = {name: str(path) for name, path in pems.items()}
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **{name: value.format(**files) for name, value in values.items()})

    text = str(caught.value)
    assert text.startswith(f"{variable}:")
    assert "\n" not in text
    for word in words:
        assert word in text
    assert BROKER_SECRET not in text
    assert STORAGE_SECRET not in text


@pytest.mark.parametrize("name", ["MESSAGE_BROKER_PORT", "REMOTE_STORAGE_PORT", "ULOS_LOG_FORMAT"])
def test_a_bad_value_never_shows_the_passwords(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **{name: "nonsense"})

    assert BROKER_SECRET not in str(caught.value)
    assert STORAGE_SECRET not in str(caught.value)


def test_no_password_in_any_repr(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = load(tmp_path)
    shown = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(BrokerAddress.of(settings, "node")),
        repr(FtpAddress.of(settings)),
    ]

    for text in shown:
        assert BROKER_SECRET not in text
        assert STORAGE_SECRET not in text
    assert BrokerAddress.of(settings, "node").password == BROKER_SECRET
    assert FtpAddress.of(settings).password == STORAGE_SECRET
