-- Every model call: tokens, latency, cost and the answer itself, committed before the code it
-- produced runs, so a crash never pays for the same answer twice.
CREATE TABLE llm_calls (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id           TEXT NOT NULL REFERENCES tasks (id),
    node_id           INTEGER,
    role              TEXT NOT NULL,
    model             TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reasoning_tokens  INTEGER NOT NULL,
    latency_s         REAL NOT NULL,
    cost              REAL NOT NULL,
    attempts          INTEGER NOT NULL,
    content           TEXT NOT NULL,
    reasoning         TEXT NOT NULL,
    created_at        REAL NOT NULL
);

CREATE INDEX llm_calls_task ON llm_calls (task_id, node_id);

ALTER TABLE tasks ADD COLUMN max_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN max_cost REAL NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN analysis TEXT;
