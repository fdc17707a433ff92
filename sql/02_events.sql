-- One row per classified event. event_id is deterministic (hash of topic:partition:offset:index), so a
-- replayed Kafka record collapses to one row under FINAL (and in background merges); version (= ingest time)
-- keeps the newest classification.
CREATE TABLE IF NOT EXISTS `{database}`.`events`
(
    `event_id` String,
    `event_time` DateTime,
    `event_time_ms` UInt64,
    `ingest_time_ms` UInt64,
    `app_id` String,
    `event_name` String,
    `platform` String,
    `device_id` String,
    `category` String,
    `rule_id` String,
    `engine` String,
    `duration_ms` Nullable(Float64),
    `message` String,
    `fields` String,
    `attrs` String,
    `traceparent` String,
    `src_topic` String,
    `src_partition` Int32,
    `src_offset` Int64,
    `src_index` Int32,
    `version` UInt64
)
ENGINE = ReplacingMergeTree(`version`)
PARTITION BY toYYYYMM(`event_time`)
ORDER BY `event_id`
{table_settings}
