-- Reserved job slots of remote build nodes: one row per slot, id `<xname>/<slot>`, so the primary
-- key refuses a second reservation of the same slot (two replicas placing jobs at once). Written
-- in the transaction that assigns a job to the node. Same row shape as the record tables so the
-- generic store code serves it.
CREATE TABLE node_slots (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, created TEXT,
    link_path TEXT, status TEXT, job_type TEXT, data TEXT NOT NULL);
