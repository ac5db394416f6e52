-- Station rows live in a table named per StationFeed (spec.postgres.table),
-- so the table schema is a function that creates one such table, plus a
-- registry of the tables created. A later migration that changes the
-- schema alters every table in the registry and replaces the function.

CREATE TABLE IF NOT EXISTS fleetward_station_tables (
    name       text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION fleetward_ensure_station_table(tbl text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Same rule as the CRD and the encryptor: a plain lower-case identifier.
    IF tbl !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid station table name %', tbl;
    END IF;
    -- Two encryptors starting at once must not race on CREATE TABLE.
    PERFORM pg_advisory_xact_lock(hashtext('fleetward_station_tables'));
    EXECUTE format($ddl$
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
        )$ddl$, tbl);
    -- Exports select a contract's rows in a time range.
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (contract_index, last_update)', tbl || '_by_time', tbl);
    INSERT INTO fleetward_station_tables (name) VALUES (tbl) ON CONFLICT DO NOTHING;
END
$fn$;
