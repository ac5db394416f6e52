-- Security events of fleetward gateways: every rejected message with its
-- reason, commands sent or refused, key reloads, device changes.
-- Never holds secrets or message payloads.
CREATE TABLE IF NOT EXISTS gateway_audit (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL,
    namespace   TEXT NOT NULL,
    gateway     TEXT NOT NULL,
    device_id   TEXT,
    event       TEXT NOT NULL,
    reason      TEXT,
    message_id  TEXT,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS gateway_audit_device_at ON gateway_audit (namespace, gateway, device_id, at);
CREATE INDEX IF NOT EXISTS gateway_audit_event_at ON gateway_audit (event, at);
