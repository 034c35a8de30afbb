-- A task's description lives apart from its row: listings never read it, and one large
-- description no longer slows every GET /v1/tasks.
CREATE TABLE task_texts (
    task_id TEXT PRIMARY KEY REFERENCES tasks(id),
    description TEXT NOT NULL
);
INSERT INTO task_texts (task_id, description)
    SELECT id, COALESCE(json_extract(spec, '$.description'), '') FROM tasks;
UPDATE tasks SET spec = json_remove(spec, '$.description');
