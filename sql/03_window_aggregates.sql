-- One row per (window, category, app) and pane. Early/on-time/late panes of the same window replace each
-- other: the highest version (pane order) wins under FINAL.
CREATE TABLE IF NOT EXISTS `{database}`.`window_aggregates`
(
    `window_start` DateTime,
    `window_start_ms` UInt64,
    `window_end` DateTime,
    `window_end_ms` UInt64,
    `category` String,
    `app_id` String,
    `count` UInt64,
    `distinct_devices` UInt64,
    `p50` Nullable(Float64),
    `p95` Nullable(Float64),
    `max` Nullable(Float64),
    `pane` String,
    `pane_index` UInt64,
    `version` UInt64
)
ENGINE = ReplacingMergeTree(`version`)
PARTITION BY toYYYYMM(`window_start`)
ORDER BY (`window_start`, `category`, `app_id`)
{table_settings}
