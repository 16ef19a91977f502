-- A notification whose channel was down (SMTP or SMS provider unreachable, 4xx, timeout)
-- waits in the ledger as `deferred` and is retried by the background relay until
-- `give_up_at` (NOTIFY_RETRY_BUDGET_SECONDS after its first failure); past it, it is
-- dead-lettered with the reason. NULL for quiet-hours deferrals and digests.
ALTER TABLE notification_ledger ADD COLUMN IF NOT EXISTS give_up_at timestamptz;
