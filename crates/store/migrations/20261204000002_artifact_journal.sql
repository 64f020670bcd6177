-- Artifact work (moves, deletes, manifests to write) that a committed record change still owes:
-- written in the same transaction as the change, removed once the work is done, and driven to
-- completion after a crash (see docs/architecture.md). Same row shape as the record tables so the
-- generic store code serves it.
CREATE TABLE artifact_journal (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, created TEXT,
    link_path TEXT, status TEXT, job_type TEXT, data TEXT NOT NULL);
