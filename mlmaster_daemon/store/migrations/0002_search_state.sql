-- The search policy's full state (tree statistics, chains, RNG) saved with every node outcome,
-- and every parent of a node (a crossover has two).
ALTER TABLE tasks ADD COLUMN search_state TEXT;
ALTER TABLE nodes ADD COLUMN parent_ids TEXT;
