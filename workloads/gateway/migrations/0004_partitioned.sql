-- Retention by time partitions (fleetward-partitions), never DELETE:
--
-- gateway_audit: one partition per gateway (LIST on namespace/gateway, so
-- each Gateway's spec.retention.auditDays applies to its own rows only),
-- each cut into Monday-aligned weeks on `at`; a week goes once all its
-- rows are older than the Gateway's retention.
--
-- gateway_replay_batches: hour-wide partitions on last_expires, shared by
-- all gateways: an hour whose every id has left its window is nobody's
-- and goes whole (this replaces the per-gateway DELETE).
--
-- The rows an older gateway wrote move into one partition per gateway
-- (audit) or one for the table (replay) that ends with the week or hour
-- of the newest row, kept whole until that row expires: nothing is lost.

-- The partition of one gateway's audit rows, made if missing (the gateway
-- calls this at start; `audit::gateway_partition` names it the same way).
CREATE OR REPLACE FUNCTION fleetward_audit_partition(ns text, gw text) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    part text := 'gateway_audit_' || left(encode(sha256(convert_to(ns || '/' || gw, 'UTF8')), 'hex'), 16);
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('fleetward_audit_partition:' || part));
    IF to_regclass(quote_ident(part)) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF gateway_audit FOR VALUES IN (%L) PARTITION BY RANGE (at)',
                       part, ns || '/' || gw);
    END IF;
    RETURN part;
END
$fn$;

ALTER TABLE gateway_audit RENAME TO gateway_audit_unpartitioned;
ALTER INDEX gateway_audit_pkey RENAME TO gateway_audit_unpartitioned_pkey;
ALTER INDEX gateway_audit_device_at RENAME TO gateway_audit_unpartitioned_device_at;
ALTER INDEX gateway_audit_event_at RENAME TO gateway_audit_unpartitioned_event_at;
ALTER SEQUENCE gateway_audit_id_seq OWNED BY NONE;

-- No primary key: a partitioned table's key must hold its partition key,
-- an expression here. `id` stays unique from its sequence.
CREATE TABLE gateway_audit (
    id          BIGINT NOT NULL DEFAULT nextval('gateway_audit_id_seq'),
    at          TIMESTAMPTZ NOT NULL,
    namespace   TEXT NOT NULL,
    gateway     TEXT NOT NULL,
    device_id   TEXT,
    event       TEXT NOT NULL,
    reason      TEXT,
    message_id  TEXT,
    detail      TEXT
) PARTITION BY LIST ((namespace || '/' || gateway));
ALTER SEQUENCE gateway_audit_id_seq OWNED BY gateway_audit.id;
CREATE INDEX gateway_audit_device_at ON gateway_audit (namespace, gateway, device_id, at);
CREATE INDEX gateway_audit_event_at ON gateway_audit (event, at);

DO $$
DECLARE
    g record;
    part text;
    week_end timestamptz;
BEGIN
    FOR g IN SELECT namespace, gateway, max(at) AS newest FROM gateway_audit_unpartitioned GROUP BY 1, 2 LOOP
        part := fleetward_audit_partition(g.namespace, g.gateway);
        week_end := to_timestamp(floor((extract(epoch FROM g.newest) - 345600) / 604800) * 604800 + 345600 + 604800);
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (MINVALUE) TO (%L)',
                       part || '_before', part, week_end);
    END LOOP;
END $$;
INSERT INTO gateway_audit SELECT * FROM gateway_audit_unpartitioned;
DROP TABLE gateway_audit_unpartitioned;

ALTER TABLE gateway_replay_batches RENAME TO gateway_replay_batches_unpartitioned;
ALTER INDEX gateway_replay_batches_pkey RENAME TO gateway_replay_batches_unpartitioned_pkey;
ALTER INDEX gateway_replay_batches_expires RENAME TO gateway_replay_batches_unpartitioned_expires;
ALTER SEQUENCE gateway_replay_batches_id_seq OWNED BY NONE;
CREATE TABLE gateway_replay_batches (
    id           BIGINT NOT NULL DEFAULT nextval('gateway_replay_batches_id_seq'),
    namespace    TEXT NOT NULL,
    gateway      TEXT NOT NULL,
    device_ids   TEXT[] NOT NULL,
    message_ids  TEXT[] NOT NULL,
    expires_at   BIGINT[] NOT NULL,
    last_expires BIGINT NOT NULL,
    PRIMARY KEY (id, last_expires)
) PARTITION BY RANGE (last_expires);
ALTER SEQUENCE gateway_replay_batches_id_seq OWNED BY gateway_replay_batches.id;
CREATE INDEX gateway_replay_batches_expires ON gateway_replay_batches (namespace, gateway, last_expires);
DO $$
DECLARE
    newest bigint := (SELECT max(last_expires) FROM gateway_replay_batches_unpartitioned);
BEGIN
    IF newest IS NOT NULL THEN
        EXECUTE format('CREATE TABLE gateway_replay_batches_before PARTITION OF gateway_replay_batches '
                       'FOR VALUES FROM (MINVALUE) TO (%s)', (floor(newest / 3600.0) * 3600 + 3600)::bigint);
    END IF;
END $$;
INSERT INTO gateway_replay_batches SELECT * FROM gateway_replay_batches_unpartitioned;
DROP TABLE gateway_replay_batches_unpartitioned;
