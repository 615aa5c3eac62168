-- What each statement puts in the log: full row images, never the statement.

CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL DEFAULT 1.5, joined TEXT DEFAULT (NOW()))

CREATE INDEX users_name ON users (name)

-- Defaults and NOW() are evaluated once, on the leader, and carried as values.
INSERT INTO users (id, name) VALUES (1, 'ada'), (2, 'bob')

-- An integer key chosen by the engine when none is given.
INSERT INTO users (name, score) VALUES ('cy', NULL)

-- An UPDATE is a whole new row image under the same key.
UPDATE users SET score = score * 2 WHERE name <> 'cy'

-- Changing the key is a Delete and an Insert.
UPDATE users SET id = 10 WHERE id = 1

-- OR REPLACE deletes the row it conflicts with, then inserts.
INSERT OR REPLACE INTO users (id, name) VALUES (2, 'bea')

-- Upserts beyond DO NOTHING are refused, with what to use instead.
INSERT INTO users (id, name) VALUES (3, 'dup') ON CONFLICT (id) DO UPDATE SET name = excluded.name || '!'

INSERT INTO users (id, name) VALUES (1, 'dup') ON CONFLICT DO NOTHING

-- A failed statement adds nothing; the request's other statements keep their changes.
INSERT INTO users (id, name) VALUES (4, 'dee'); INSERT INTO users (id, name) VALUES (4, 'again')

-- In a transaction, one failure undoes the whole request.
BEGIN; INSERT INTO users (id, name) VALUES (5, 'eve'); INSERT INTO users (id, name) VALUES (NULL, NULL); COMMIT

DELETE FROM users WHERE score IS NULL RETURNING id, name

SELECT * FROM users ORDER BY id

-- RANDOM() is evaluated once, on the leader, and replicated as its value.
CREATE TABLE draws (n INTEGER PRIMARY KEY, r INTEGER)

INSERT INTO draws VALUES (1, RANDOM() % 1000)

DROP INDEX users_name

DROP TABLE draws

SELECT type, name FROM sqlite_schema ORDER BY name
