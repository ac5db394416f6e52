-- Retention by time partitions (fleetward-partitions): station tables are
-- range-partitioned on last_update, telemetry tables on received_at, in
-- week-wide partitions the encryptor makes as rows need them and drops
-- once every row in them is older than the feed's or gateway's retention.
--
-- A table an older release made (a plain table) is converted the first
-- time the encryptor prepares it: its rows move, in this transaction, into
-- one partition that ends with the week of its newest row, kept whole
-- until that row expires. Nothing is lost; the old table is dropped.

-- The end of the Monday-aligned week (UTC) that holds t: the grid the
-- encryptor's partitions are cut on (fleetward_partitions::slot).
CREATE OR REPLACE FUNCTION fleetward_week_end(t timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT to_timestamp(floor((extract(epoch FROM t) - 345600) / 604800) * 604800 + 345600 + 604800)
$fn$;

-- Moves a plain table's rows into its partitioned replacement: `tbl` is
-- renamed away (with its indexes), `create_ddl` makes the partitioned
-- table, one partition takes every old row, the old table goes.
CREATE OR REPLACE FUNCTION fleetward_partition_existing(tbl text, col text, create_ddl text) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    old text := 'fleetward_unpartitioned_' || left(md5(tbl), 16);
    newest timestamptz;
    idx record;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass(quote_ident(tbl))) IS DISTINCT FROM 'r' THEN
        EXECUTE create_ddl;
        RETURN;
    END IF;
    EXECUTE format('ALTER TABLE %I RENAME TO %I', tbl, old);
    FOR idx IN SELECT indexrelid::regclass::text AS name, row_number() OVER () AS n
               FROM pg_index WHERE indrelid = to_regclass(quote_ident(old)) LOOP
        EXECUTE format('ALTER INDEX %s RENAME TO %I', idx.name, old || '_i' || idx.n);
    END LOOP;
    EXECUTE create_ddl;
    EXECUTE format('SELECT max(%I) FROM %I', col, old) INTO newest;
    IF newest IS NOT NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (MINVALUE) TO (%L)',
                       left(tbl, 48) || '_before_' || to_char(fleetward_week_end(newest) AT TIME ZONE 'UTC', 'YYYYMMDD'),
                       tbl, fleetward_week_end(newest));
        EXECUTE format('INSERT INTO %I SELECT * FROM %I', tbl, old);
    END IF;
    EXECUTE format('DROP TABLE %I', old);
END
$fn$;

CREATE OR REPLACE FUNCTION fleetward_ensure_station_table(tbl text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Same rule as the CRD and the encryptor: a plain lower-case identifier.
    IF tbl !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid station table name %', tbl;
    END IF;
    -- Two encryptors starting at once must not race on CREATE TABLE.
    PERFORM pg_advisory_xact_lock(hashtext('fleetward_station_tables'));
    PERFORM fleetward_partition_existing(tbl, 'last_update', format($ddl$
        CREATE TABLE IF NOT EXISTS %1$I (
            -- HMAC-SHA256(keyring indexKey, lower(contract_name)): matches a
            -- contract without storing its name readable (seed 000 encrypts it).
            contract_index        text        NOT NULL,
            number                text        NOT NULL,
            last_update           timestamptz NOT NULL,
            -- Keyring key id that encrypted this row's sensitive fields.
            key_id                text        NOT NULL,
            -- Which of the columns below hold Fernet tokens.
            encrypted_fields      text[]      NOT NULL DEFAULT '{}',
            contract_name         text        NOT NULL,
            name                  text        NOT NULL,
            address               text        NOT NULL,
            -- {"lat":…,"lng":…} as JSON text, or its token; NULL if the source had none.
            position              text,
            banking               boolean     NOT NULL,
            bonus                 boolean     NOT NULL,
            bike_stands           integer     NOT NULL,
            available_bike_stands integer     NOT NULL,
            available_bikes       integer     NOT NULL,
            status                text        NOT NULL,
            ingested_at           timestamptz NOT NULL DEFAULT now(),
            -- The natural key: a replayed Kafka record, or an unchanged
            -- station seen by the next poll, is the same row.
            PRIMARY KEY (contract_index, number, last_update)
        ) PARTITION BY RANGE (last_update)$ddl$, tbl));
    -- Exports select a contract's rows in a time range.
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (contract_index, last_update)', tbl || '_by_time', tbl);
    INSERT INTO fleetward_station_tables (name) VALUES (tbl) ON CONFLICT DO NOTHING;
END
$fn$;

CREATE OR REPLACE FUNCTION fleetward_ensure_telemetry_table(tbl text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF tbl !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid telemetry table name %', tbl;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('fleetward_telemetry_tables'));
    PERFORM fleetward_partition_existing(tbl, 'received_at', format($ddl$
        CREATE TABLE IF NOT EXISTS %1$I (
            namespace    text        NOT NULL,
            gateway      text        NOT NULL,
            device_id    text        NOT NULL,
            message_id   text        NOT NULL,
            category     text        NOT NULL,
            -- The device's timestamp and when the gateway accepted it.
            device_time  timestamptz NOT NULL,
            received_at  timestamptz NOT NULL,
            -- Keyring key id of the token in payload.
            key_id       text        NOT NULL,
            -- Fernet token of the payload JSON exactly as the device sent it.
            payload      text        NOT NULL,
            stored_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
            -- The gateway refuses a message id it has seen from the same
            -- device; a replayed Kafka record is the same row (the same
            -- received_at, the partition key, which the key must hold).
            PRIMARY KEY (namespace, gateway, device_id, message_id, received_at)
        ) PARTITION BY RANGE (received_at)$ddl$, tbl));
    -- Exports select a device's readings in a time range.
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (namespace, device_id, device_time)', tbl || '_by_time', tbl);
    INSERT INTO fleetward_telemetry_tables (name) VALUES (tbl) ON CONFLICT DO NOTHING;
END
$fn$;
