-- The ids of accepted messages whose timestamps are still inside the
-- timestamp window: the replay window, kept across gateway restarts.
-- A row may go once expires_at (Unix seconds: the message's timestamp plus
-- the window) has passed.
CREATE TABLE IF NOT EXISTS gateway_replay (
    namespace   TEXT NOT NULL,
    gateway     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (namespace, gateway, device_id, message_id)
);
CREATE INDEX IF NOT EXISTS gateway_replay_expires ON gateway_replay (namespace, gateway, expires_at);
