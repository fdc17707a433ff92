"""BatchCoder: FastPrimitivesCoder's bytes, and a size estimate that does not encode whole lists."""

from __future__ import annotations

import apache_beam as beam
from apache_beam import coders
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.coders import Batch, BatchCoder


def test_same_bytes_as_the_default_coder_and_round_trip():
    events = [{"event_id": str(i), "fields": {"message": "é" * i}, "src": ["t", 0, i, 0]} for i in range(5)]
    for value in (events, events[0], [], ("k", 1), b"raw"):
        assert BatchCoder().encode(value) == coders.FastPrimitivesCoder().encode(value)
        assert BatchCoder().decode(BatchCoder().encode(value)) == value
        impl = BatchCoder().get_impl()
        assert impl.decode(impl.encode(value)) == value


def test_list_estimate_scales_the_first_item():
    impl = BatchCoder().get_impl()
    one = coders.FastPrimitivesCoder().get_impl().estimate_size({"a": "x" * 100}, True)
    batch = [{"a": "x" * 100}] * 500
    assert impl.estimate_size(batch) == 500 * one + 2
    # A batch whose later items do not encode: only the first is looked at.
    assert impl.estimate_size([{"a": 1}, object()]) > 0


def test_registered_for_the_batch_hint_and_in_tuples():
    assert coders.registry.get_coder(Batch) == BatchCoder()
    pair = coders.registry.get_coder(beam.typehints.Tuple[int, Batch])
    assert str(pair) == "TupleCoder[VarIntCoder, BatchCoder]"


def test_batches_cross_a_shuffle_intact():
    with TestPipeline(runner="FnApiRunner") as p:
        out = (p | beam.Create(range(6))
               | "Lists" >> beam.Map(lambda i: (i % 2, [{"i": i, "s": "é"}] * i)).with_output_types(
                   tuple[int, Batch])
               | beam.GroupByKey()
               | beam.MapTuple(lambda k, lists: (k, sorted(len(x) for x in lists))))
        assert_that(out, equal_to([(0, [0, 2, 4]), (1, [1, 3, 5])]))
