-- One row that the readiness check rewrites: a server is ready only while a write can commit
-- (a full disk makes it unready before a client's write fails).
CREATE TABLE write_probe (id INTEGER PRIMARY KEY, at TEXT NOT NULL, pad TEXT NOT NULL);
