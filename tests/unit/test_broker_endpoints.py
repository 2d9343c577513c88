"""MESSAGE_BROKER_HOST as a list of a cluster's brokers (SPEC §8)."""

from __future__ import annotations

import pytest

from ulos_py.adapters import rabbitmq
from ulos_py.errors import ConfigError
from ulos_py.settings import ConnectionSettings, broker_endpoints


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        ("rabbit", (("rabbit", 5672),)),
        ("rabbit:5673", (("rabbit", 5673),)),
        ("r1, r2:5673 ,r3", (("r1", 5672), ("r2", 5673), ("r3", 5672))),
        ("[::1]:5674,[fe80::1]", (("::1", 5674), ("fe80::1", 5672))),
    ],
)
def test_brokers_are_listed_in_order_with_the_default_port(
    hosts: str, expected: tuple[tuple[str, int], ...]
) -> None:
    assert broker_endpoints(hosts, 5672) == expected


@pytest.mark.parametrize("hosts", ["r1,,r2", "r1:", "r1:x", "r1:70000", ":5672", " "])
def test_a_bad_list_names_the_variable_and_the_entry(hosts: str) -> None:
    with pytest.raises(ConfigError, match="MESSAGE_BROKER_HOST"):
        broker_endpoints(hosts, 5672)


def test_every_listed_broker_gets_the_virtual_host() -> None:
    settings = ConnectionSettings(
        MESSAGE_BROKER_HOST="r1,r2:5673", MESSAGE_BROKER_VHOST="lab-7", MESSAGE_BROKER_PORT=5674
    )
    address = rabbitmq.BrokerAddress.of(settings, "test")

    assert [(url.host, url.port, url.path) for url in address.urls(1)] == [
        ("r2", 5673, "/lab-7"),
        ("r1", 5674, "/lab-7"),
    ]
    assert "password" not in str(address.urls())
