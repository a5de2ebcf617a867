-- A user's tokens carry the version they were issued at; a password change, an
-- admin's reset, a demotion or a deactivation bumps it, so older tokens stop
-- working at once. Tokens issued before this migration carry none (read as 0).
-- A constant default: no table rewrite.
ALTER TABLE users ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;
