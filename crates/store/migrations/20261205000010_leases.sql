-- Leases that elect one replica for a duty (the background work: job reconciler, remote-node
-- passes), renewed by conditional updates at the row's version. Same row shape as the record
-- tables so the generic store code serves it.
CREATE TABLE leases (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, created TEXT,
    link_path TEXT, status TEXT, job_type TEXT, data TEXT NOT NULL);
