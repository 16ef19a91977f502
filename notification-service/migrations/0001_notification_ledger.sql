-- The notification ledger: what was sent, deferred, summarised or refused, per
-- (namespace, event, channel). `namespace` keeps deployments that share a database apart.
-- Every statement is idempotent: this is the schema the service created at start-up before
-- it had migrations, so a database made that way takes this migration as a no-op.
CREATE TABLE IF NOT EXISTS notification_ledger (
  namespace   text        NOT NULL,
  event_id    text        NOT NULL,
  channel     text        NOT NULL,
  kind        text        NOT NULL DEFAULT 'event' CHECK (kind IN ('event', 'digest')),
  user_id     text        NOT NULL,
  task_id     text,
  event_type  text        NOT NULL,
  recipient   text        NOT NULL,
  title       text,
  status      text        NOT NULL,
  reason      text,
  event       jsonb,
  due_at      timestamptz,
  lease_until timestamptz,
  attempts    integer     NOT NULL DEFAULT 0,
  counted_at  timestamptz,
  sent_at     timestamptz,
  digest_id   text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (namespace, event_id, channel)
);
CREATE INDEX IF NOT EXISTS notification_ledger_by_user
  ON notification_ledger (namespace, user_id, created_at);
CREATE INDEX IF NOT EXISTS notification_ledger_due
  ON notification_ledger (namespace, due_at) WHERE status = 'deferred';
CREATE INDEX IF NOT EXISTS notification_ledger_rate
  ON notification_ledger (namespace, user_id, channel, counted_at)
  WHERE status IN ('sending', 'sent');
