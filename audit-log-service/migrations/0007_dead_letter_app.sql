-- Issue 14: which app gave up on a dead letter — the `dead-letter-source` header of a dead
-- letter an app published itself, or what can be told of one daprd made (a component only
-- one app uses). NULL: daprd of a subscriber of a shared component; the message names none.
-- (0007, not 0006: the resume branch's commit order takes 0006.)
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS app text;
