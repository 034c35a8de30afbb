-- Who submitted a task (the peer's uid from SO_PEERCRED, and its user name), how much active
-- time the task has used in earlier runs of the daemon (downtime never counts), and nodes
-- interrupted before they had code (a daemon stop; they do not count as steps).
ALTER TABLE tasks ADD COLUMN submitter_uid INTEGER;
ALTER TABLE tasks ADD COLUMN submitter TEXT;
ALTER TABLE tasks ADD COLUMN active_s REAL NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0;
