-- Migration 3 for PostgreSQL (as ../migration3.sql): fleet enrollment tokens.

ALTER TABLE tokens ADD COLUMN max_uses BIGINT NOT NULL DEFAULT 1;
ALTER TABLE tokens ADD COLUMN uses BIGINT NOT NULL DEFAULT 0;
UPDATE tokens SET uses = 1 WHERE used_at IS NOT NULL;
