-- Applied by `python -m pipeline clickhouse init` (transforms.clickhouse_schema.ensure_schema).
-- Placeholders: {database} (validated identifier), {table_settings} (empty on servers older than 22.2,
-- else the settings that turn on insert deduplication for non-replicated tables).
-- Must parse on ClickHouse 18.16 (Debian) and 26.x (chdb): no DateTime64, no LowCardinality, no CHECK.
CREATE DATABASE IF NOT EXISTS `{database}`
