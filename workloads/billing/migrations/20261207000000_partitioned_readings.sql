-- Retention by time partitions (fleetward-partitions), never DELETE: the
-- readings are partitioned by namespace (LIST), each namespace's into
-- Monday-aligned weeks of received_at (RANGE). A week goes once every
-- reading in it is older than the longest `spec.retention.readingsDays`
-- of the namespace's Tariffs (they all bill from the same readings, so
-- a Tariff with a short retention never takes another's evidence); each
-- Tariff's billing service records its own in `retention`.
--
-- The readings an older release stored move into one partition per
-- namespace that ends with the week of its newest reading, kept whole
-- until that reading expires: nothing is lost.

CREATE TABLE fleetward_billing.retention (
    namespace     TEXT NOT NULL,
    tariff        TEXT NOT NULL,
    readings_days INTEGER NOT NULL CHECK (readings_days > 0),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, tariff)
);

-- The partition of one namespace's readings, made if missing
-- (`db::readings_partitioned` uses it).
CREATE FUNCTION fleetward_billing.readings_partition(ns text) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    part text := 'readings_' || left(encode(sha256(convert_to(ns, 'UTF8')), 'hex'), 16);
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('fleetward_billing.readings_partition:' || part));
    IF to_regclass('fleetward_billing.' || quote_ident(part)) IS NULL THEN
        EXECUTE format('CREATE TABLE fleetward_billing.%I PARTITION OF fleetward_billing.readings '
                       'FOR VALUES IN (%L) PARTITION BY RANGE (received_at)', part, ns);
    END IF;
    RETURN part;
END
$fn$;

ALTER TABLE fleetward_billing.readings RENAME TO readings_unpartitioned;
ALTER INDEX fleetward_billing.readings_pkey RENAME TO readings_unpartitioned_pkey;
ALTER INDEX fleetward_billing.readings_by_time RENAME TO readings_unpartitioned_by_time;
ALTER INDEX fleetward_billing.readings_by_reply RENAME TO readings_unpartitioned_by_reply;

-- Every reading a meter sent through its gateway, once: a re-delivered
-- Kafka record carries the same received_at, so the key (which must hold
-- the partition keys) still makes it harmless.
CREATE TABLE fleetward_billing.readings (
    namespace   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    device_time TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    kwh         NUMERIC(20, 3) NOT NULL CHECK (kwh >= 0),
    reply_to    TEXT,
    PRIMARY KEY (namespace, device_id, message_id, received_at)
) PARTITION BY LIST (namespace);
CREATE INDEX readings_by_time ON fleetward_billing.readings (namespace, device_id, device_time);
CREATE INDEX readings_by_reply ON fleetward_billing.readings (namespace, reply_to) WHERE reply_to IS NOT NULL;

DO $$
DECLARE
    n record;
    part text;
BEGIN
    FOR n IN SELECT namespace, max(received_at) AS newest FROM fleetward_billing.readings_unpartitioned GROUP BY 1 LOOP
        part := fleetward_billing.readings_partition(n.namespace);
        EXECUTE format('CREATE TABLE fleetward_billing.%I PARTITION OF fleetward_billing.%I FOR VALUES FROM (MINVALUE) TO (%L)',
                       part || '_before', part,
                       to_timestamp(floor((extract(epoch FROM n.newest) - 345600) / 604800) * 604800 + 345600 + 604800));
    END LOOP;
END $$;
INSERT INTO fleetward_billing.readings SELECT * FROM fleetward_billing.readings_unpartitioned;
DROP TABLE fleetward_billing.readings_unpartitioned;
