-- fleetward billing: meter readings, accounts and tenancies, runs, bills
-- (with revisions) and payments. Amounts are NUMERIC, never floats.
CREATE SCHEMA IF NOT EXISTS fleetward_billing;

-- Every reading a meter sent through its gateway, once: the natural key
-- makes re-delivery from Kafka harmless. `reply_to` is set on readings
-- that answer a read_meter command.
CREATE TABLE fleetward_billing.readings (
    namespace   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    device_time TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    kwh         NUMERIC(20, 3) NOT NULL CHECK (kwh >= 0),
    reply_to    TEXT,
    PRIMARY KEY (namespace, device_id, message_id)
);
CREATE INDEX readings_by_time ON fleetward_billing.readings (namespace, device_id, device_time);
CREATE INDEX readings_by_reply ON fleetward_billing.readings (namespace, reply_to) WHERE reply_to IS NOT NULL;

CREATE TABLE fleetward_billing.accounts (
    namespace  TEXT NOT NULL,
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    email      TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, id)
);

-- A tenant holds a property from starts_on (inclusive) to ends_on
-- (exclusive; NULL while ongoing). The API refuses overlaps per property.
CREATE TABLE fleetward_billing.tenancies (
    id         BIGSERIAL PRIMARY KEY,
    namespace  TEXT NOT NULL,
    property   TEXT NOT NULL,
    account_id TEXT NOT NULL,
    starts_on  DATE NOT NULL,
    ends_on    DATE CHECK (ends_on IS NULL OR ends_on > starts_on),
    FOREIGN KEY (namespace, account_id) REFERENCES fleetward_billing.accounts (namespace, id)
);
CREATE INDEX tenancies_by_property ON fleetward_billing.tenancies (namespace, property, starts_on);

CREATE TABLE fleetward_billing.runs (
    id          UUID PRIMARY KEY,
    namespace   TEXT NOT NULL,
    tariff      TEXT NOT NULL,
    period      TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    meters      INTEGER NOT NULL DEFAULT 0,
    answered    INTEGER NOT NULL DEFAULT 0,
    estimated   INTEGER NOT NULL DEFAULT 0,
    bills       INTEGER NOT NULL DEFAULT 0,
    unchanged   INTEGER NOT NULL DEFAULT 0,
    total       NUMERIC(20, 6),
    error       TEXT
);

-- The register of a meter at the end of a period, as its answer to a
-- read_meter command gave it: fixed once, so re-running the period bills
-- the same reading.
CREATE TABLE fleetward_billing.period_end_readings (
    namespace  TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    period     TEXT NOT NULL,
    kwh        NUMERIC(20, 3) NOT NULL,
    device_time TIMESTAMPTZ NOT NULL,
    message_id TEXT NOT NULL,
    run_id     UUID NOT NULL,
    PRIMARY KEY (namespace, device_id, period)
);

-- A bill per (tariff, meter, holder, part of the month) and revision: a
-- correction adds a revision and keeps the old one.
CREATE TABLE fleetward_billing.bills (
    id           UUID PRIMARY KEY,
    namespace    TEXT NOT NULL,
    tariff       TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    property     TEXT NOT NULL,
    account_id   TEXT NOT NULL,
    period       TEXT NOT NULL,
    part_from    DATE NOT NULL,
    part_to      DATE NOT NULL,
    revision     INTEGER NOT NULL,
    currency     TEXT NOT NULL,
    units        NUMERIC(20, 3) NOT NULL,
    lines        JSONB NOT NULL,
    total        NUMERIC(20, 6) NOT NULL,
    due_date     DATE NOT NULL,
    estimated    BOOLEAN NOT NULL,
    resets       INTEGER NOT NULL DEFAULT 0,
    start_kwh    NUMERIC(20, 3),
    end_kwh      NUMERIC(20, 3),
    run_id       UUID NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    superseded   BOOLEAN NOT NULL DEFAULT false,
    UNIQUE (namespace, tariff, device_id, account_id, part_from, revision)
);
CREATE INDEX bills_by_period ON fleetward_billing.bills (namespace, tariff, period) WHERE NOT superseded;
CREATE INDEX bills_by_account ON fleetward_billing.bills (namespace, account_id) WHERE NOT superseded;

-- Payments count towards the bill (all revisions of it: a payment made
-- against revision 1 still counts after a correction).
CREATE TABLE fleetward_billing.payments (
    id          UUID PRIMARY KEY,
    namespace   TEXT NOT NULL,
    bill_id     UUID NOT NULL REFERENCES fleetward_billing.bills (id),
    amount      NUMERIC(20, 6) NOT NULL CHECK (amount > 0),
    method      TEXT NOT NULL,
    reference   TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (namespace, reference)
);
CREATE INDEX payments_by_bill ON fleetward_billing.payments (bill_id);
