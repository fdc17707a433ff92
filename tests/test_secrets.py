"""Secrets: given as ${env:NAME} / ${file:/path}, resolved in workers, never in options, graphs or logs."""

from __future__ import annotations

import pickle

import pytest

from transforms.common import ConfigError
from transforms.kafka_config import redacted, resolve_secrets, validate_client_config
from transforms.kafkaio import ReadConfig, ReadFromKafka, WriteToKafka

SECRET = "s3cr3t-value-never-shown"


def test_references_resolve_from_env_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("KAFKA_PW", SECRET)
    f = tmp_path / "pw"
    f.write_text(SECRET + "\n")
    cfg = {"sasl.password": "${env:KAFKA_PW}", "ssl.key.password": f"${{file:{f}}}", "acks": "all"}
    assert resolve_secrets(cfg) == {"sasl.password": SECRET, "ssl.key.password": SECRET, "acks": "all"}


def test_missing_env_or_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("NOPE_PW", raising=False)
    with pytest.raises(ConfigError, match="NOPE_PW is not set"):
        resolve_secrets({"sasl.password": "${env:NOPE_PW}"})
    with pytest.raises(ConfigError, match="cannot read secret file"):
        resolve_secrets({"sasl.password": f"${{file:{tmp_path}/missing}}"})
    with pytest.raises(ConfigError, match="kafka.consumer.sasl.password"):
        validate_client_config({"sasl.password": "${vault:x}"}, "kafka.consumer")


def test_literal_secrets_are_redacted_and_references_kept():
    shown = redacted({"sasl.password": SECRET, "sasl.username": "u", "ssl.key.password": "${env:X}"})
    assert shown == {"sasl.password": "***", "sasl.username": "u", "ssl.key.password": "${env:X}"}


def test_the_pickled_transforms_hold_references_not_values(monkeypatch):
    """What a runner ships and shows (the pickled DoFns, the job's options) carries no secret value."""
    monkeypatch.setenv("KAFKA_PW", SECRET)
    consumer = {"bootstrap.servers": "127.0.0.1:9092", "sasl.password": "${env:KAFKA_PW}"}
    read = ReadFromKafka(ReadConfig(topics=("t",), consumer=consumer))
    write = WriteToKafka({"sasl.password": "${env:KAFKA_PW}"})
    blob = pickle.dumps(read) + pickle.dumps(write)
    assert SECRET.encode() not in blob
    assert b"${env:KAFKA_PW}" in blob
    assert SECRET not in read._cfg.describe()
