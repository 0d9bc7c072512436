"""-X parsing and the bounded retry of transient Kafka errors (no broker needed)."""
from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from funnel.errors import ConfigError, FunnelError
from funnel.kafka import parse_overrides, retry_transient


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
