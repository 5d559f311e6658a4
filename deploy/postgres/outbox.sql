-- Transactional outbox table relayed by the resilience sidecar (issue 11).
--
-- The application inserts one row per event in the same transaction as its
-- own data; the sidecar's outbox relay (config section `outbox`) publishes
-- every committed row through the EventService exactly once per row id and
-- then marks it (published_at) or deletes it (on_publish: delete).
-- See docs/outbox.md.
--
-- Apply it once per database:   psql "$DATABASE_URL" -f deploy/postgres/outbox.sql
-- It is idempotent (safe to apply again). To use another table name or
-- NOTIFY channel, replace `outbox` below (the table and its index, the
-- trigger's table and the channel argument 'outbox' of the trigger) and set
-- outbox.table / outbox.notify_channel to match.

CREATE TABLE IF NOT EXISTS outbox (
    -- The row id is the event's identity: the relay publishes it with the
    -- idempotency key "outbox:<table>:<id>".
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The EventService topic the row is published to.
    topic        text        NOT NULL,
    -- The event key (ordering / partitioning key); may be empty.
    key          text        NOT NULL DEFAULT '',
    payload      bytea       NOT NULL DEFAULT '\x',
    -- A JSON object of string values, published as the event's headers.
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- NULL until the relay has published the row (mark mode).
    published_at timestamptz
);

-- The relay and its backlog query only ever read unpublished rows.
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;

-- Every relayed row leaves a dead tuple (and a dead entry in the index
-- above) behind, marked or deleted; vacuum the table after every few
-- thousand of them rather than after a fifth of the table, so the relay's
-- index scans stay short under a sustained load.
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000
);

-- Wakes the relays (LISTEN <channel>) once per inserting statement; they
-- also poll, so a lost notification only delays a row by poll_interval.
-- The channel is the trigger's argument.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT
    EXECUTE FUNCTION outbox_notify('outbox');
