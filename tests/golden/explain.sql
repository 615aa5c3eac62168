-- Access paths and plans the planner picks, over small tables with keys and indexes.

CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, c REAL)

CREATE INDEX t_b ON t (b)

CREATE TABLE u (x INTEGER, y INTEGER, z TEXT, PRIMARY KEY (x, y))

CREATE INDEX u_z ON u (z)

INSERT INTO t VALUES (1, 'p', 0.5), (2, 'q', 1.5), (3, 'p', NULL)

INSERT INTO u VALUES (1, 1, 'p'), (1, 2, 'q'), (2, 1, 'p')

-- A point lookup by primary key, a key range, a full scan.
EXPLAIN SELECT * FROM t WHERE a = 2

EXPLAIN SELECT * FROM t WHERE a > 1 AND a <= 3

EXPLAIN SELECT * FROM t WHERE c > 1

-- Through a secondary index; a composite key's prefix.
EXPLAIN SELECT a FROM t WHERE b = 'p'

EXPLAIN SELECT * FROM u WHERE x = 1

EXPLAIN SELECT * FROM u WHERE x = 1 AND y = 2

-- Joins.
EXPLAIN SELECT t.a, u.y FROM t JOIN u ON u.x = t.a WHERE t.b = 'p'

EXPLAIN SELECT * FROM t, u WHERE t.b = u.z

-- Join order: a key lookup written last is read first; a chain written out of order is read
-- along its equalities; a LEFT JOIN stays where it is written.
EXPLAIN SELECT * FROM u, t WHERE u.y = t.a AND t.a = 2

EXPLAIN SELECT t1.a FROM t t1, u, t t2, u u2 WHERE t2.a = u2.x AND t1.a = u.x AND u.y = t2.a

EXPLAIN SELECT * FROM t LEFT JOIN u ON u.x = t.a, t t2 WHERE t2.a = 1

-- Aggregation, ordering, limits, subqueries, compounds.
EXPLAIN SELECT b, count(*), sum(c) FROM t GROUP BY b HAVING count(*) > 1 ORDER BY b

EXPLAIN SELECT * FROM t ORDER BY c DESC LIMIT 2 OFFSET 1

EXPLAIN SELECT a FROM t WHERE a IN (SELECT x FROM u WHERE z = 'p')

EXPLAIN SELECT a FROM t UNION SELECT x FROM u

-- EXPLAIN covers queries; a write is refused with a readable error.
EXPLAIN UPDATE t SET c = 0 WHERE b = 'q'

EXPLAIN DELETE FROM u WHERE x = 2
