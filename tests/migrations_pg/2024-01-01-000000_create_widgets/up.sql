CREATE TABLE widgets (
    id SERIAL PRIMARY KEY,
    name TEXT NOT NULL
);
