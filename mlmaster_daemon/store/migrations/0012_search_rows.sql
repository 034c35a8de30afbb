-- The search tree's nodes are saved one row each (issue 18): a node's commit rewrites only the
-- rows that changed, not the whole tree. tasks.search_state keeps the rest (the policy without
-- its tree's nodes, the open picks, the memory), its tree marked "rows": "apart".
CREATE TABLE search_nodes (
    task_id  TEXT NOT NULL REFERENCES tasks (id),
    id       INTEGER NOT NULL,
    row      TEXT NOT NULL,                 -- the node's saved form (TreeNode.to_state), JSON
    PRIMARY KEY (task_id, id)
) WITHOUT ROWID;

-- Tasks saved before: their tree's nodes move into rows.
INSERT INTO search_nodes (task_id, id, row)
    SELECT tasks.id, json_extract(node.value, '$[0]'), node.value
    FROM tasks, json_each(tasks.search_state, '$.policy.tree.nodes') AS node
    WHERE tasks.search_state IS NOT NULL
      AND json_type(tasks.search_state, '$.policy.tree.nodes') = 'array';
UPDATE tasks
    SET search_state = json_set(json_remove(search_state, '$.policy.tree.nodes'),
                                '$.policy.tree.rows', 'apart')
    WHERE search_state IS NOT NULL
      AND json_type(search_state, '$.policy.tree.nodes') = 'array';
