DROP TABLE friendships;
DROP TABLE friend_requests;
DROP TABLE order_items;
DROP TABLE orders;
DROP TABLE products;
DROP TABLE users;
