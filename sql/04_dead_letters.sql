-- Records that a stage refused, with why and where they came from. payload/key are the original Kafka bytes
-- (or, for SINK_REJECTED, the row as JSON) so they can be inspected and replayed. Unknown ints are -1.
CREATE TABLE IF NOT EXISTS `{database}`.`dead_letters`
(
    `code` String,
    `reason` String,
    `stage` String,
    `topic` String,
    `partition` Int32,
    `offset` Int64,
    `index` Int32,
    `time` DateTime,
    `time_ms` UInt64,
    `key` String,
    `payload` String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(`time`)
ORDER BY (`time`, `topic`, `partition`, `offset`)
{table_settings}
