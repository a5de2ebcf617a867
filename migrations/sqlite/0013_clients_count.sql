-- Every group read (the list, a group's detail, each client endpoint, a launch's
-- checks) counted the group's live clients, so a list cost more as its groups
-- grew (issue 10 item 12: 1,927 requests a second beside a group of 10,000
-- clients, 148 beside one of 100,000). The count is kept instead, current
-- through triggers on clients: whatever inserts, soft-deletes or deletes
-- clients (an import, a client added or removed by hand, a manual statement)
-- keeps it right without knowing it exists. Rows an INSERT … ON CONFLICT DO
-- NOTHING skips are not inserted and fire nothing. A status change (the launch
-- marks 100,000 clients contacted) touches neither deleted_at nor group_id, so
-- it fires nothing either.
--
-- The count has a narrow table of its own rather than a column of groups:
-- SQLite's triggers run once per row, and each update rewrites the whole row
-- it changes, a group's prompt and variables included. For 100,000 inserted
-- clients, a count on the group's row cost 0.04 s more with a small group and
-- 0.5 s more with a 60 KB prompt; in this table, 0.03 s more (BENCHMARKS.md).
CREATE TABLE group_counts (
    group_id INTEGER PRIMARY KEY,
    clients  INTEGER NOT NULL DEFAULT 0
);

INSERT INTO group_counts (group_id, clients)
SELECT g.id, (SELECT COUNT(*) FROM clients c WHERE c.group_id = g.id AND c.deleted_at IS NULL)
FROM groups g;

CREATE TRIGGER group_counts_new_group AFTER INSERT ON groups BEGIN
    INSERT INTO group_counts (group_id) VALUES (NEW.id) ON CONFLICT (group_id) DO NOTHING;
END;

CREATE TRIGGER group_counts_insert AFTER INSERT ON clients WHEN NEW.deleted_at IS NULL BEGIN
    UPDATE group_counts SET clients = clients + 1 WHERE group_id = NEW.group_id;
END;

CREATE TRIGGER group_counts_update AFTER UPDATE OF deleted_at, group_id ON clients
WHEN (OLD.deleted_at IS NULL) <> (NEW.deleted_at IS NULL) OR OLD.group_id <> NEW.group_id BEGIN
    UPDATE group_counts SET clients = clients - 1 WHERE group_id = OLD.group_id AND OLD.deleted_at IS NULL;
    UPDATE group_counts SET clients = clients + 1 WHERE group_id = NEW.group_id AND NEW.deleted_at IS NULL;
END;

CREATE TRIGGER group_counts_delete AFTER DELETE ON clients WHEN OLD.deleted_at IS NULL BEGIN
    UPDATE group_counts SET clients = clients - 1 WHERE group_id = OLD.group_id;
END;
