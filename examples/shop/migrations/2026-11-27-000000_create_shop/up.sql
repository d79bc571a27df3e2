CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL
);

CREATE TABLE products (
    id BIGSERIAL PRIMARY KEY,
    category_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    stock INTEGER NOT NULL CHECK (stock >= 0),
    -- Bumped by every committed change (updates and orders): what a reader
    -- of the cache can compare.
    version BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX products_category_id ON products (category_id);

CREATE TABLE orders (
    id BIGSERIAL PRIMARY KEY,
    customer_email TEXT NOT NULL,
    -- The client's own reference for the order (shows up in the email).
    client_ref TEXT,
    total_cents BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE order_items (
    order_id BIGINT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id BIGINT NOT NULL REFERENCES products (id),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE friend_requests (
    id BIGSERIAL PRIMARY KEY,
    from_user_id BIGINT NOT NULL REFERENCES users (id),
    to_user_id BIGINT NOT NULL REFERENCES users (id),
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted')),
    CHECK (from_user_id <> to_user_id)
);

-- One row per pair, smaller id first.
CREATE TABLE friendships (
    user_a BIGINT NOT NULL REFERENCES users (id),
    user_b BIGINT NOT NULL REFERENCES users (id),
    PRIMARY KEY (user_a, user_b),
    CHECK (user_a < user_b)
);
