"""ReadFromKafka / WriteToKafka against the real broker (bounded mode, FnApiRunner)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from confluent_kafka import Consumer, TopicPartition

from tests.conftest import BOOTSTRAP, create_topics, produce, read_all
from transforms.common import ConfigError
from transforms.kafkaio import (
    KafkaMessage,
    KafkaReadError,
    ReadConfig,
    ReadFromKafka,
    WriteToKafka,
    list_partitions,
)

FNAPI = PipelineOptions(["--runner=FnApiRunner"])


def _cfg(group: str, **kw) -> ReadConfig:
    kw.setdefault("stop_at_end", True)
    return ReadConfig(consumer={"bootstrap.servers": BOOTSTRAP, "group.id": group}, **kw)


def _committed(group: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group})
    try:
        return [
            tp.offset for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        ]
    finally:
        c.close()


def test_bounded_read_returns_every_record_with_metadata_and_commits(kafka, topic_prefix):
    topic = f"{topic_prefix}.in"
    create_topics([topic], partitions=3)
    values = [b"v%d" % i for i in range(300)]
    for part in range(3):
        produce(topic, values[part::3], headers=[("traceparent", b"00-abc")], key=b"k", partition=part)
    group = f"{topic_prefix}-g"
    with beam.Pipeline(options=FNAPI) as p:
        recs = p | ReadFromKafka(_cfg(group, topics=(topic,)))
        assert_that(recs | beam.Map(lambda r: r.value), equal_to(values), label="values")
        assert_that(
            recs | beam.Map(lambda r: (r.topic, r.key, r.headers, r.timestamp > 0)) | beam.Distinct(),
            equal_to([(topic, b"k", (("traceparent", b"00-abc"),), True)]),
            label="metadata",
        )
    # Bundle finalization committed the next offset of every partition: lag 0.
    ends = []
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "x"})
    for p in range(3):
        ends.append(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
    c.close()
    assert ends == [100, 100, 100]
    assert _committed(group, topic, 3) == ends


def test_batch_records_gives_lists_of_one_partition_and_a_list_sink(kafka, topic_prefix):
    topic, out = f"{topic_prefix}.in", f"{topic_prefix}.out"
    create_topics([topic], partitions=2)
    values = [b"v%d" % i for i in range(101)]
    produce(topic, values[:60], partition=0)
    produce(topic, values[60:], partition=1)
    group = f"{topic_prefix}-g"
    with beam.Pipeline(options=FNAPI) as p:
        lists = p | ReadFromKafka(_cfg(group, topics=(topic,), batch_records=16))
        assert_that(lists | beam.FlatMap(lambda b: [r.value for r in b]), equal_to(values), label="values")
        # Every element a list of <= 16 records of one partition, offsets ascending.
        shape = lists | beam.Map(lambda b: (type(b) is list, 0 < len(b) <= 16, len({r.partition for r in b}),
                                            [r.offset for r in b] == sorted(r.offset for r in b)))
        assert_that(shape | beam.Distinct(), equal_to([(True, True, 1, True)]), label="shape")
        # WriteToKafka takes lists of messages as elements too.
        _ = (lists | beam.Map(lambda b: [KafkaMessage(out, None, r.value) for r in b])
             | WriteToKafka({"bootstrap.servers": BOOTSTRAP}))
    assert sorted(m.value() for m in read_all(out)) == sorted(values)
    assert _committed(group, topic, 2) == [60, 41]


@pytest.mark.parametrize("batch_records", [1, 4])
def test_event_time_header_drives_element_timestamps(kafka, topic_prefix, batch_records):
    # Kafka timestamps are "now"; the producer's event times (2 h earlier, in ms or s) come in a header.
    topic = f"{topic_prefix}.in"
    create_topics([topic], partitions=1)
    base_ms = 1_790_000_000_000
    headers = [("event_time", str(base_ms + i * 1000).encode()) for i in range(5)]
    headers += [("event_time", str((base_ms + 5000) // 1000).encode()),  # seconds
                ("other", b"x"), ("event_time", b"not a time")]  # both: the Kafka timestamp
    for i, h in enumerate(headers):
        produce(topic, [b"v%d" % i], headers=[h], partition=0)
    cfg = _cfg(f"{topic_prefix}-g", topics=(topic,), event_time_header="event_time",
               batch_records=batch_records)

    def event_ms(r):  # what the header says, else the Kafka timestamp
        i = int(r.value[1:])
        return base_ms + i * 1000 if i < 6 else r.timestamp

    class Stamp(beam.DoFn):
        def process(self, element, ts=beam.DoFn.TimestampParam):
            recs = element if isinstance(element, list) else [element]
            # An element is stamped with its (oldest) record's event time.
            yield ts.micros // 1000 == min(event_ms(r) for r in recs), len(recs)

    with beam.Pipeline(options=FNAPI) as p:
        got = p | ReadFromKafka(cfg) | beam.ParDo(Stamp())
        assert_that(got | beam.Map(lambda t: t[0]) | beam.Distinct(), equal_to([True]), label="stamps")
        assert_that(got | beam.Map(lambda t: t[1]) | beam.CombineGlobally(sum), equal_to([8]), label="all")


def test_restart_with_same_group_reads_only_new_records(kafka, topic_prefix):
    topic = f"{topic_prefix}.in"
    create_topics([topic], partitions=2)
    produce(topic, [b"old%d" % i for i in range(50)])
    group = f"{topic_prefix}-g"
    with beam.Pipeline(options=FNAPI) as p:
        _ = p | ReadFromKafka(_cfg(group, topics=(topic,)))
    produce(topic, [b"new%d" % i for i in range(20)])
    with beam.Pipeline(options=FNAPI) as p:
        recs = p | ReadFromKafka(_cfg(group, topics=(topic,), start="committed"))
        assert_that(recs | beam.Map(lambda r: r.value), equal_to([b"new%d" % i for i in range(20)]))


def test_max_records_is_a_total_across_partitions(kafka, topic_prefix):
    topic = f"{topic_prefix}.in"
    create_topics([topic], partitions=4)
    produce(topic, [b"%d" % i for i in range(100)])
    with beam.Pipeline(options=FNAPI) as p:
        n = (
            p
            | ReadFromKafka(_cfg(f"{topic_prefix}-g", topics=(topic,), max_records=37))
            | beam.combiners.Count.Globally()
        )
        assert_that(n, equal_to([37]))


def test_topic_pattern_reads_matching_topics_only(kafka, topic_prefix):
    a, b, other = f"{topic_prefix}.ingest.a", f"{topic_prefix}.ingest.b", f"{topic_prefix}.other"
    create_topics([a, b, other])
    produce(a, [b"a"] * 5)
    produce(b, [b"b"] * 7)
    produce(other, [b"x"] * 3)
    cfg = _cfg(f"{topic_prefix}-g", topic_pattern=rf"^{topic_prefix}\.ingest\..*")
    with beam.Pipeline(options=FNAPI) as p:
        recs = p | ReadFromKafka(cfg)
        assert_that(
            recs | beam.Map(lambda r: r.topic) | beam.combiners.Count.PerElement(), equal_to([(a, 5), (b, 7)])
        )


def test_unknown_topic_is_a_clear_error_naming_it(kafka, topic_prefix):
    with pytest.raises(KafkaReadError, match=f"{topic_prefix}.missing"):
        list_partitions(_cfg("g", topics=(f"{topic_prefix}.missing",)))


def test_bad_source_config_names_the_key():
    from transforms.kafkaio import validate_read_config

    with pytest.raises(ConfigError, match="source.topics"):
        validate_read_config(ReadConfig())
    with pytest.raises(ConfigError, match="source.topic_pattern"):
        validate_read_config(ReadConfig(topic_pattern="(["))
    with pytest.raises(ConfigError, match="source.start"):
        validate_read_config(ReadConfig(topics=("a",), start="beginning"))


def test_write_routes_per_record_topic_with_headers(kafka, topic_prefix):
    t1, t2 = f"{topic_prefix}.out.A", f"{topic_prefix}.out.B"
    create_topics([t1, t2])
    msgs = [
        KafkaMessage(t1 if i % 3 else t2, b"app", b"m%d" % i, (("traceparent", b"tp%d" % i),))
        for i in range(60)
    ]
    with beam.Pipeline(options=FNAPI) as p:
        _ = p | beam.Create(msgs) | WriteToKafka({"bootstrap.servers": BOOTSTRAP})
    got1, got2 = read_all(t1), read_all(t2)
    assert sorted(m.value() for m in got1) == sorted(m.value for m in msgs if m.topic == t1)
    assert sorted(m.value() for m in got2) == sorted(m.value for m in msgs if m.topic == t2)
    assert all(m.headers()[0][0] == "traceparent" and m.key() == b"app" for m in got1 + got2)


def test_write_fails_the_bundle_when_records_are_not_acknowledged(kafka, topic_prefix):
    # A topic name the broker rejects: delivery fails, so the bundle must fail (the runner would retry).
    with pytest.raises(Exception, match="rejected|not acknowledged"):
        with beam.Pipeline(options=FNAPI) as p:
            _ = (
                p
                | beam.Create([KafkaMessage("bad topic name!", None, b"x")])
                | WriteToKafka({"bootstrap.servers": BOOTSTRAP, "message.timeout.ms": 3000}, retry_budget_s=8)
            )


def test_write_retries_while_the_broker_is_away(kafka, topic_prefix):
    """Records produced to an unreachable broker are retried within the budget and delivered when it
    answers: here a local TCP relay that only starts forwarding after a few seconds."""
    import socket
    import threading
    import time

    topic = f"{topic_prefix}.out"
    create_topics([topic])
    host, port = BOOTSTRAP.split(":")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    relay_port = listener.getsockname()[1]
    listener.close()  # nothing listens yet: connection refused, like a broker that is down

    def relay():
        time.sleep(6)
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", relay_port))
        srv.listen()
        srv.settimeout(60)
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.create_connection((host, int(port)))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=relay, daemon=True).start()
    msgs = [KafkaMessage(topic, None, b"r%d" % i) for i in range(50)]
    cfg = {
        "bootstrap.servers": f"127.0.0.1:{relay_port}",
        "message.timeout.ms": 3000,
        "enable.idempotence": False,
        "acks": "1",
    }
    with beam.Pipeline(options=FNAPI) as p:
        _ = p | beam.Create(msgs) | WriteToKafka(cfg, retry_budget_s=120)
    assert sorted(m.value() for m in read_all(topic)) == sorted(m.value for m in msgs)


def _pipe(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        dst.close()
