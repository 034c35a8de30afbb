-- Nodes by state across all tasks: what a start looks for (processes left running, nodes to
-- requeue or fail) without reading every node of every task (issue 18: a 10k-node database
-- spent 0.2 s of its start scanning the table).
CREATE INDEX nodes_by_state ON nodes (state);
