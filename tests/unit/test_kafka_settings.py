"""-X parsing, the bounded retry of transient Kafka errors, the mapping of Kafka errors to
ours, and the names checked before any I/O (no broker needed)."""
from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from applier.applier import ApplierOptions
from funnel.control import check_mirror_id
from funnel.errors import ConfigError, FunnelError
from funnel.kafka import kafka_error, parse_overrides, retry_transient
from funnel.topic import check_funnel_name, colliding_topic


def test_overrides_are_key_value_pairs():
    assert parse_overrides(["security.protocol=SSL", "sasl.password=a=b"]) == {
        "security.protocol": "SSL", "sasl.password": "a=b"}
    with pytest.raises(ConfigError, match="-X key=value"):
        parse_overrides(["acks"])


def failing(codes: list[int], result: str = "ok"):
    calls = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= len(codes):
            raise KafkaException(KafkaError(codes[len(calls) - 1]))
        return result
    return call, calls


def test_transient_errors_are_retried_until_the_call_succeeds():
    call, calls = failing([KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE])
    assert retry_transient(call, "reading") == "ok"
    assert len(calls) == 3


def test_other_errors_fail_at_once_with_one_line():
    call, calls = failing([KafkaError.TOPIC_AUTHORIZATION_FAILED])
    with pytest.raises(FunnelError, match="^reading: "):
        retry_transient(call, "reading")
    assert len(calls) == 1


def test_transient_errors_give_up_after_the_budget():
    call, calls = failing([KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    with pytest.raises(FunnelError, match="reading"):
        retry_transient(call, "reading", budget_s=0.5)
    assert 1 < len(calls) < 10


@pytest.mark.parametrize(("code", "hint_part"), [
    (KafkaError.INVALID_REPLICATION_FACTOR, "--replication-factor"),
    (KafkaError.TOPIC_EXCEPTION, "letters, digits"),
    (KafkaError.INVALID_CONFIG, "value"),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, "security settings"),
    (KafkaError._TRANSPORT, "--bootstrap"),
])
def test_kafka_errors_get_the_hint_of_their_cause(code, hint_part):
    error = kafka_error(KafkaException(KafkaError(code)), "cannot create topic 'shop'")
    assert isinstance(error, FunnelError) and str(error).startswith("cannot create topic 'shop': ")
    assert hint_part in error.hint
    # Only a connection problem points at the address; a refusal came from a broker that answered.
    assert ("--bootstrap" in error.hint) == (code == KafkaError._TRANSPORT)


def test_a_bad_client_setting_is_a_config_error():
    error = kafka_error(KafkaException(KafkaError(KafkaError._INVALID_ARG, "No such configuration property")), "x")
    assert isinstance(error, ConfigError) and "CONFIGURATION.md" in error.hint


def test_the_publisher_library_refuses_bad_settings_with_a_typed_error():
    from producer.library import Publisher

    with pytest.raises(ConfigError, match='No such configuration property: "no.such.setting"'):
        Publisher("shop", bootstrap="127.0.0.1:9", kafka_settings={"no.such.setting": "1"})
    with pytest.raises(ConfigError, match="acks"):
        Publisher("shop", bootstrap="127.0.0.1:9", kafka_settings={"acks": "1"})  # idempotence needs all


@pytest.mark.parametrize("mirror", ["a/b", "", "m 1", "m1/", "x" * 201, "mirror\n"])
def test_bad_mirror_ids_are_refused(mirror):
    with pytest.raises(ConfigError, match="invalid mirror id"):
        check_mirror_id(mirror)


def test_mirror_ids_of_letters_digits_dots_dashes_and_underscores_pass():
    assert check_mirror_id("reporting-eu.m_1") == "reporting-eu.m_1"
    with pytest.raises(ConfigError, match="invalid mirror id"):
        ApplierOptions("shop", "a/b", 1.0).validate()  # the applier applies the same rule


@pytest.mark.parametrize(("name", "reason"), [
    ("a" * 242, "too long"), ("..", "not allow"), (".", "not allow"), ("shop.control", "reserved"),
    ("shop/1", "invalid funnel name"), ("", "invalid funnel name")])
def test_funnel_names_are_checked_for_both_topics_before_any_io(name, reason):
    with pytest.raises(ConfigError, match=reason):
        check_funnel_name(name)
    check_funnel_name("a" * 241)  # its control topic is exactly Kafka's 249 characters


def test_kafka_confuses_dots_and_underscores_in_topic_names():
    existing = {"shop", "shop.control", "orders_eu"}
    assert colliding_topic("shop_control", existing) == "shop.control"
    assert colliding_topic("orders.eu", existing) == "orders_eu"
    assert colliding_topic("shop.control", existing) is None  # the same topic is not a collision
    assert colliding_topic("shop2", existing) is None


def test_the_cli_renders_every_error_on_one_line(capsys):
    from funnel.cli import render

    render(ConfigError("connection failed: refused\n\tIs the server running?", hint="check\nthe URL"))
    assert capsys.readouterr().err == "Error: connection failed: refused Is the server running?\nTry: check the URL\n"


def test_an_unreachable_broker_is_named_as_tried_even_when_x_overrides_the_address():
    import socket

    from funnel.errors import BrokerUnreachableError
    from funnel.kafka import KafkaSettings, check_reachable

    with socket.socket() as probe:  # a loopback port nobody listens on: refused at once, no broker needed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kafka = KafkaSettings("127.0.0.1:9092", {"bootstrap.servers": f"127.0.0.1:{port}"}, connect_timeout_s=1)
    with pytest.raises(BrokerUnreachableError, match=rf"broker at 127\.0\.0\.1:{port} within 1s"):
        check_reachable(kafka)
