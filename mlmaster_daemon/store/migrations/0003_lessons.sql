-- L3 of the hierarchical cache: lessons distilled at the end of each task, kept across tasks.
CREATE TABLE lessons (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     TEXT NOT NULL REFERENCES tasks (id),
    text        TEXT NOT NULL,
    profile     TEXT NOT NULL,              -- TaskProfile as JSON
    score       REAL NOT NULL,
    created_at  REAL NOT NULL
);
