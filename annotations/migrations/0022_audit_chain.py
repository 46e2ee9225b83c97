"""The audit trail becomes a hash chain, computed by the database on every insert, and the
table refuses TRUNCATE as it already refuses UPDATE and DELETE."""

from django.db import migrations, models

# Frozen here, not imported: a migration must install the same thing forever.
# annotations/audit.py writes the same serialisation in Python (and its tests compare them).
GENESIS = "0" * 64  # the prev_hash of the first row
LOCK_KEY = 4_180_910_001  # the advisory lock that serialises appends

# The serialisation in SQL. The trigger takes the advisory
# lock, numbers the row and links it under that lock (see the comment in the function).
SQL_CANON = r"""
CREATE OR REPLACE FUNCTION annotations_audit_hash(
    id bigint, at timestamptz, actor_id integer, action text, project_id bigint,
    task_id bigint, before jsonb, after jsonb, reason text, prev_hash text
) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(jsonb_build_array(
        id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        actor_id, action, project_id, task_id, before, after, reason, prev_hash
    )::text, 'UTF8')), 'hex')
$$;
"""

SQL_CHAIN = f"""
CREATE OR REPLACE FUNCTION annotations_audit_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    previous text;
BEGIN
    -- A transaction-level lock, held until commit: a row is invisible to other writers
    -- until its transaction commits, so a lock released right after the insert would let
    -- the next writer read the same "last row" and fork the chain.
    PERFORM pg_advisory_xact_lock({LOCK_KEY});
    -- Numbered under the lock: ids then follow the chain (a default taken before the lock
    -- could be smaller than that of a row committed ahead of it).
    NEW.id := nextval(pg_get_serial_sequence('annotations_auditevent', 'id'));
    IF NEW.at IS NULL THEN
        NEW.at := now();
    END IF;
    SELECT e.hash INTO previous FROM annotations_auditevent e ORDER BY e.id DESC LIMIT 1;
    NEW.prev_hash := coalesce(previous, '{GENESIS}');
    NEW.hash := annotations_audit_hash(
        NEW.id, NEW.at, NEW.actor_id, NEW.action, NEW.project_id, NEW.task_id,
        NEW.before, NEW.after, NEW.reason, NEW.prev_hash);
    RETURN NEW;
END;
$$;
"""

# Existing rows, in id order, in one pass: hashes gathered in arrays and written every
# 50,000 rows with one UPDATE, with the append-only trigger off for this migration only.
BACKFILL = f"""
ALTER TABLE annotations_auditevent DISABLE TRIGGER annotations_auditevent_append_only;
DO $$
DECLARE
    r record;
    previous text := '{GENESIS}';
    ids bigint[] := '{{}}';
    prevs text[] := '{{}}';
    hashes text[] := '{{}}';
BEGIN
    FOR r IN SELECT * FROM annotations_auditevent ORDER BY id LOOP
        ids := ids || r.id;
        prevs := prevs || previous;
        previous := annotations_audit_hash(r.id, r.at, r.actor_id, r.action, r.project_id,
            r.task_id, r.before, r.after, r.reason, previous);
        hashes := hashes || previous;
        IF cardinality(ids) >= 50000 THEN
            UPDATE annotations_auditevent e SET prev_hash = u.p, hash = u.h
            FROM unnest(ids, prevs, hashes) u(i, p, h) WHERE e.id = u.i;
            ids := '{{}}'; prevs := '{{}}'; hashes := '{{}}';
        END IF;
    END LOOP;
    UPDATE annotations_auditevent e SET prev_hash = u.p, hash = u.h
    FROM unnest(ids, prevs, hashes) u(i, p, h) WHERE e.id = u.i;
END;
$$;
ALTER TABLE annotations_auditevent ENABLE TRIGGER annotations_auditevent_append_only;
"""

TRIGGERS = """
CREATE TRIGGER annotations_auditevent_chain
    BEFORE INSERT ON annotations_auditevent
    FOR EACH ROW EXECUTE FUNCTION annotations_audit_chain();
CREATE TRIGGER annotations_auditevent_no_truncate
    BEFORE TRUNCATE ON annotations_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION annotations_audit_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS annotations_auditevent_no_truncate ON annotations_auditevent;
DROP TRIGGER IF EXISTS annotations_auditevent_chain ON annotations_auditevent;
DROP FUNCTION IF EXISTS annotations_audit_chain();
DROP FUNCTION IF EXISTS annotations_audit_hash(
    bigint, timestamptz, integer, text, bigint, bigint, jsonb, jsonb, text, text);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("annotations", "0021_history_signature"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="prev_hash",
            field=models.CharField(default="", editable=False, max_length=64),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="hash",
            field=models.CharField(default="", editable=False, max_length=64),
        ),
        migrations.RunSQL(SQL_CANON + SQL_CHAIN, DROP),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
        migrations.RunSQL(TRIGGERS, migrations.RunSQL.noop),
        migrations.AddConstraint(
            model_name="auditevent",
            constraint=models.UniqueConstraint(
                fields=["prev_hash"], name="audit_chain_does_not_fork"
            ),
        ),
    ]
