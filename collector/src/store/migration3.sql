-- Migration 3: fleet enrollment tokens. An enroll token may enroll up to max_uses hosts (default 1,
-- the one-time token of before); uses counts enrollments made with it, used_at is the last one.

ALTER TABLE tokens ADD COLUMN max_uses INTEGER NOT NULL DEFAULT 1;
ALTER TABLE tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 0;
UPDATE tokens SET uses = 1 WHERE used_at IS NOT NULL;
