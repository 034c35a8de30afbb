-- How many times the daemon died (was killed, crashed) while this node's script ran or was
-- being judged: a node that keeps taking the daemon down with it is failed, not re-run forever.
ALTER TABLE nodes ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
