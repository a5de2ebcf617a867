-- An import writes up to 200,000 clients in one transaction, and the foreign
-- key to groups ran one referential check per row (a lookup and a row lock on
-- the group): ~26 of ~80 ms per 10,000 clients. Clients are written only into
-- the group just created in the same transaction, or into a group the request
-- has just read as visible, and groups are never deleted (only soft-deleted),
-- so the reference cannot dangle; the check only cost. (SQLite keeps its
-- foreign key: dropping it there means rebuilding the table, and its import
-- is well within its goal.)
ALTER TABLE clients DROP CONSTRAINT IF EXISTS clients_group_id_fkey;
