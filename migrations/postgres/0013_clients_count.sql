-- Every group read (the list, a group's detail, each client endpoint, a launch's
-- checks) counted the group's live clients, so a list cost more as its groups
-- grew (issue 10 item 12: 1,291 requests a second beside a group of 10,000
-- clients, 379 beside one of 100,000). The count is kept instead, current
-- through triggers on clients: whatever inserts, soft-deletes or deletes
-- clients (an import, a client added or removed by hand, a manual statement)
-- keeps it right without knowing it exists.
--
-- It has a narrow table of its own, as on SQLite (where a per-row trigger
-- rewriting the group's whole row cost too much), so the same SQL reads it
-- and an import holds no lock on the group's row itself.
--
-- Inserts and deletes are counted per statement from the transition table:
-- an import's INSERT of 10,000 clients is one update of its group's count,
-- not 10,000 (each a new row version, and a wait for its lock). Rows an
-- INSERT … ON CONFLICT DO NOTHING skips are not in the table. Soft deletes are
-- one row at a time (a client removed by hand); that trigger names its
-- columns, so a status change (the launch marks 100,000 clients contacted)
-- does not fire it at all. Counts are upserted in group order, so statements
-- touching several groups lock them in the same order.
CREATE TABLE group_counts (
    group_id BIGINT PRIMARY KEY,
    clients  BIGINT NOT NULL DEFAULT 0
);

INSERT INTO group_counts (group_id, clients)
SELECT g.id, COUNT(c.id) FROM groups g LEFT JOIN clients c ON c.group_id = g.id AND c.deleted_at IS NULL
GROUP BY g.id;

CREATE FUNCTION group_counts_new_group() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO group_counts (group_id) VALUES (NEW.id) ON CONFLICT (group_id) DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE FUNCTION group_counts_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO group_counts AS n (group_id, clients)
        SELECT group_id, COUNT(*) FROM new_rows WHERE deleted_at IS NULL GROUP BY group_id ORDER BY group_id
        ON CONFLICT (group_id) DO UPDATE SET clients = n.clients + EXCLUDED.clients;
    ELSE
        INSERT INTO group_counts AS n (group_id, clients)
        SELECT group_id, -COUNT(*) FROM old_rows WHERE deleted_at IS NULL GROUP BY group_id ORDER BY group_id
        ON CONFLICT (group_id) DO UPDATE SET clients = n.clients + EXCLUDED.clients;
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION group_counts_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.deleted_at IS NULL THEN
        UPDATE group_counts SET clients = clients - 1 WHERE group_id = OLD.group_id;
    END IF;
    IF NEW.deleted_at IS NULL THEN
        UPDATE group_counts SET clients = clients + 1 WHERE group_id = NEW.group_id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER group_counts_new_group AFTER INSERT ON groups
    FOR EACH ROW EXECUTE FUNCTION group_counts_new_group();
CREATE TRIGGER group_counts_insert AFTER INSERT ON clients
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION group_counts_statement();
CREATE TRIGGER group_counts_delete AFTER DELETE ON clients
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION group_counts_statement();
CREATE TRIGGER group_counts_update AFTER UPDATE OF deleted_at, group_id ON clients FOR EACH ROW
    WHEN ((OLD.deleted_at IS NULL) <> (NEW.deleted_at IS NULL) OR OLD.group_id <> NEW.group_id)
    EXECUTE FUNCTION group_counts_row();
