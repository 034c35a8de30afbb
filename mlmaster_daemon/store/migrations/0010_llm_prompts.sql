-- The prompt each model call was sent, as JSON (the chat messages, or the completion prompt as
-- a string), redacted and bounded: a task's trajectories are exported with what the coder saw.
-- Calls recorded before this column existed keep NULL.
ALTER TABLE llm_calls ADD COLUMN prompt TEXT;
