-- Device telemetry rows (the gateway's accepted messages), one table per
-- Gateway's spec.storage.postgres.table, made by this function like the
-- station tables, and registered in a table of their own.

CREATE TABLE IF NOT EXISTS fleetward_telemetry_tables (
    name       text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION fleetward_ensure_telemetry_table(tbl text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF tbl !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid telemetry table name %', tbl;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('fleetward_telemetry_tables'));
    EXECUTE format($ddl$
        CREATE TABLE IF NOT EXISTS %1$I (
            namespace    text        NOT NULL,
            gateway      text        NOT NULL,
            device_id    text        NOT NULL,
            -- The gateway refuses a message id it has seen from the same
            -- device; a replayed Kafka record is the same row.
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
            PRIMARY KEY (namespace, gateway, device_id, message_id)
        )$ddl$, tbl);
    -- Exports select a device's readings in a time range.
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (namespace, device_id, device_time)', tbl || '_by_time', tbl);
    INSERT INTO fleetward_telemetry_tables (name) VALUES (tbl) ON CONFLICT DO NOTHING;
END
$fn$;
