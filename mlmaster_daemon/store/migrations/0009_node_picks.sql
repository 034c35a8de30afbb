-- What a user needs to read the search: each node's UCT score at the last selection that
-- compared it, and why the pick that made it was chosen (draft / uct / continuation / debug).
ALTER TABLE nodes ADD COLUMN uct REAL;
ALTER TABLE nodes ADD COLUMN pick_reason TEXT;
