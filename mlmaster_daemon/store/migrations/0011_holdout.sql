-- The hidden holdout (issue 17): each working node's score on the labelled rows the node
-- scripts never saw; the task's holdout (on, with its size, or off and why, as JSON) and its
-- final selection (the rule, the chosen node and why, the ensemble when one was kept, as JSON).
-- Nodes and tasks from before keep NULL.
ALTER TABLE nodes ADD COLUMN holdout_metric REAL;
ALTER TABLE tasks ADD COLUMN holdout TEXT;
ALTER TABLE tasks ADD COLUMN selection TEXT;
