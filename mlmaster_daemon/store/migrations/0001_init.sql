-- Tasks submitted to the daemon and the nodes of their search trees.
CREATE TABLE tasks (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    task_dir      TEXT NOT NULL,
    spec          TEXT NOT NULL,            -- TaskSpec as JSON
    policy        TEXT NOT NULL,
    steps         INTEGER NOT NULL,
    time_limit_s  REAL NOT NULL,
    node_timeout_s REAL NOT NULL,
    state         TEXT NOT NULL,
    error         TEXT,
    best_node_id  INTEGER,
    best_metric   REAL,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL
);

CREATE INDEX tasks_state ON tasks (state);

CREATE TABLE nodes (
    task_id       TEXT NOT NULL REFERENCES tasks (id),
    id            INTEGER NOT NULL,         -- 1, 2, ... within the task; 0 is the virtual root
    parent_id     INTEGER,                  -- NULL for drafts (children of the virtual root)
    operator      TEXT NOT NULL,
    state         TEXT NOT NULL,
    plan          TEXT,
    summary       TEXT,
    code          TEXT,
    metric        REAL,
    error         TEXT,                     -- why the node is buggy or failed
    exit_code     INTEGER,
    pid           INTEGER,
    visits        INTEGER NOT NULL DEFAULT 0,
    value         REAL NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    PRIMARY KEY (task_id, id)
);

CREATE INDEX nodes_state ON nodes (task_id, state);
