-- Internal running state of jobs (agent location, heartbeat, user requests): same row shape as the
-- record tables so the generic store code serves it.
CREATE TABLE job_runs (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, created TEXT,
    link_path TEXT, status TEXT, job_type TEXT, data TEXT NOT NULL);
