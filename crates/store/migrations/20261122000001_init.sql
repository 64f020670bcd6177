-- One table per record kind (as the original's data files). Each row keeps the record's wire JSON in
-- `data`; the other columns are derived from it for lookups, ordering and optimistic concurrency.
CREATE TABLE public_keys (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, created TEXT,
    link_path TEXT, status TEXT, job_type TEXT, data TEXT NOT NULL);
CREATE TABLE recipes (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, created TEXT,
    link_path TEXT, status TEXT, job_type TEXT, data TEXT NOT NULL);
CREATE TABLE images (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, created TEXT,
    link_path TEXT, status TEXT, job_type TEXT, data TEXT NOT NULL);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, created TEXT,
    link_path TEXT, status TEXT, job_type TEXT, data TEXT NOT NULL);
CREATE TABLE remote_build_nodes (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, created TEXT,
    link_path TEXT, status TEXT, job_type TEXT, data TEXT NOT NULL);
CREATE TABLE deleted_public_keys (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, created TEXT,
    link_path TEXT, status TEXT, job_type TEXT, data TEXT NOT NULL);
CREATE TABLE deleted_recipes (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, created TEXT,
    link_path TEXT, status TEXT, job_type TEXT, data TEXT NOT NULL);
CREATE TABLE deleted_images (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, created TEXT,
    link_path TEXT, status TEXT, job_type TEXT, data TEXT NOT NULL);

CREATE INDEX public_keys_created ON public_keys (created, id);
CREATE INDEX recipes_created ON recipes (created, id);
CREATE INDEX images_created ON images (created, id);
CREATE INDEX jobs_created ON jobs (created, id);
CREATE INDEX deleted_public_keys_created ON deleted_public_keys (created, id);
CREATE INDEX deleted_recipes_created ON deleted_recipes (created, id);
CREATE INDEX deleted_images_created ON deleted_images (created, id);
CREATE INDEX recipes_link ON recipes (link_path);
CREATE INDEX images_link ON images (link_path);
