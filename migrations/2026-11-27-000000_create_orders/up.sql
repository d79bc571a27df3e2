-- Orders of the quickstart example and the tests. Portable SQL: runs on
-- SQLite, PostgreSQL and MySQL.
CREATE TABLE orders (
    id INTEGER PRIMARY KEY NOT NULL,
    customer VARCHAR(200) NOT NULL,
    total_cents INTEGER NOT NULL
);
