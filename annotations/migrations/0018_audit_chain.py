"""The audit trail becomes a hash chain, computed by the database on every insert, and the
table refuses TRUNCATE as it already refuses UPDATE and DELETE."""

from django.db import migrations, models

from annotations.audit import GENESIS, SQL_CANON, SQL_CHAIN

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
        ("annotations", "0017_uploads"),
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
