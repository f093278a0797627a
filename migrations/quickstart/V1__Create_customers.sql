-- The quickstart's customers.
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    status VARCHAR(20) NOT NULL,
    orders INTEGER NOT NULL DEFAULT 0
);
