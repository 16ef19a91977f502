-- The order in which the audit log committed its events: commit_seq, a number that grows
-- with every commit and that GET /audit/events pages by (after_seq, after_event_id), so a
-- reader that follows the log never skips a row committed later and never reads one twice,
-- however events are timestamped (a recurring catch-up publishes back-dated events) and
-- however many partitions and replicas write.
--
-- A sequence alone is not enough: nextval() hands out numbers at insert time, and two
-- transactions may commit in the other order, so a reader could see 12 before 11 exists
-- and page past it. Numbers are therefore handed out by one writer at a time: whoever
-- takes one holds the transaction-scoped advisory lock "audit_sq" until it commits or rolls
-- back, so a transaction numbers its rows only after every earlier numbered one has ended,
-- and any snapshot sees a prefix of the numbers (gaps from rollbacks aside). The lock is
-- taken once per batch (one statement), so writers queue for the length of one insert.
-- CACHE 1: a session must not keep a range of numbers of its own for later.
CREATE SEQUENCE audit_events_commit_seq AS bigint CACHE 1;

CREATE FUNCTION audit_events_next_commit_seq() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7022629598040912753);  -- 0x61756469745F7371, "audit_sq"
    RETURN nextval('audit_events_commit_seq');
END
$$;

-- The rows stored so far: numbered in the order they were received.
ALTER TABLE audit_events ADD COLUMN commit_seq bigint;
UPDATE audit_events e
   SET commit_seq = o.n
  FROM (SELECT event_id, received_at,
               row_number() OVER (ORDER BY received_at, occurred_at, event_id) AS n
          FROM audit_events) o
 WHERE e.event_id = o.event_id AND e.received_at = o.received_at;
SELECT setval('audit_events_commit_seq', COALESCE(max(commit_seq), 0) + 1, false)
  FROM audit_events;
ALTER TABLE audit_events
    ALTER COLUMN commit_seq SET DEFAULT audit_events_next_commit_seq(),
    ALTER COLUMN commit_seq SET NOT NULL;

-- The narrow id table says where each event sits, so after_event_id finds its number with
-- one primary-key lookup (audit_events itself has no index on event_id).
ALTER TABLE audit_event_ids ADD COLUMN commit_seq bigint;
UPDATE audit_event_ids i
   SET commit_seq = e.commit_seq
  FROM audit_events e
 WHERE e.event_id = i.event_id AND e.received_at = i.received_at;

-- Commit order, of everyone (an operator's resume) and of one user (a user's resume).
CREATE INDEX audit_events_commit_seq_idx ON audit_events (commit_seq);
CREATE INDEX audit_events_user_id_commit_seq_idx ON audit_events (user_id, commit_seq);
