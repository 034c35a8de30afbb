-- What proves a running node's process is ours after a crash (PIDs get reused), and what it used.
ALTER TABLE nodes ADD COLUMN pid_start_time REAL;
ALTER TABLE nodes ADD COLUMN boot_id TEXT;
ALTER TABLE nodes ADD COLUMN slot TEXT;
ALTER TABLE nodes ADD COLUMN gpu_peak_mb INTEGER;
ALTER TABLE nodes ADD COLUMN gpu_seconds REAL;
