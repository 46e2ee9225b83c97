"""A decision's write made lighter for the database, with the same results.

- The two SQL functions it calls become PL/pgSQL. `annotations_counts_add` (the rollups'
  JSON merge, five calls per decision) aggregates, and `annotations_audit_hash` (the audit
  chain's hash, once per audit row) is declared IMMUTABLE around a STABLE `to_char`:
  PostgreSQL inlines neither, so each call planned its query anew (about 90 µs for the
  merge). PL/pgSQL keeps its plans for the session.
- The audit chain's trigger names its sequence rather than looking it up on every row.
- Two indexes that others cover go: a task's project (every task index starts with it) and
  a label's task (label_once_per_reviewer starts with it). A decision moves its task, which
  writes an entry in every index of the task table.
"""

import django.db.models.deletion
from django.db import migrations, models

from annotations import insights

# Frozen here, not imported: a migration must install the same thing forever. The hash's
# expression is 0022's, character for character (annotations/audit.py writes the same
# serialisation in Python, and its tests compare them).
AUDIT_HASH_PLPGSQL = r"""
CREATE OR REPLACE FUNCTION annotations_audit_hash(
    id bigint, at timestamptz, actor_id integer, action text, project_id bigint,
    task_id bigint, before jsonb, after jsonb, reason text, prev_hash text
) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN encode(sha256(convert_to(jsonb_build_array(
        id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        actor_id, action, project_id, task_id, before, after, reason, prev_hash
    )::text, 'UTF8')), 'hex');
END
$$;
"""

AUDIT_HASH_SQL = r"""
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

# 0022's trigger function, frozen with the one change: the sequence named, not looked up.
_CHAIN = """
CREATE OR REPLACE FUNCTION annotations_audit_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    previous text;
BEGIN
    -- A transaction-level lock, held until commit: a row is invisible to other writers
    -- until its transaction commits, so a lock released right after the insert would let
    -- the next writer read the same "last row" and fork the chain.
    PERFORM pg_advisory_xact_lock(4180910001);
    -- Numbered under the lock: ids then follow the chain (a default taken before the lock
    -- could be smaller than that of a row committed ahead of it).
    NEW.id := SEQUENCE;
    IF NEW.at IS NULL THEN
        NEW.at := now();
    END IF;
    SELECT e.hash INTO previous FROM annotations_auditevent e ORDER BY e.id DESC LIMIT 1;
    NEW.prev_hash := coalesce(previous, '0000000000000000000000000000000000000000000000000000000000000000');
    NEW.hash := annotations_audit_hash(
        NEW.id, NEW.at, NEW.actor_id, NEW.action, NEW.project_id, NEW.task_id,
        NEW.before, NEW.after, NEW.reason, NEW.prev_hash);
    RETURN NEW;
END;
$$;
"""
AUDIT_CHAIN_NAMED = _CHAIN.replace("SEQUENCE", "nextval('annotations_auditevent_id_seq'::regclass)")
AUDIT_CHAIN_LOOKUP = _CHAIN.replace(
    "SEQUENCE", "nextval(pg_get_serial_sequence('annotations_auditevent', 'id'))"
)

COUNTS_ADD_SQL_BEFORE = """
CREATE OR REPLACE FUNCTION annotations_counts_add(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT COALESCE(jsonb_object_agg(k, n), '{}'::jsonb) FROM (
    SELECT k, sum(v::bigint) AS n
    FROM (SELECT * FROM jsonb_each_text(a) UNION ALL SELECT * FROM jsonb_each_text(b)) e(k, v)
    GROUP BY k HAVING sum(v::bigint) <> 0
  ) s
$$
"""


class Migration(migrations.Migration):
    dependencies = [("annotations", "0028_prompt_comparison")]

    operations = [
        migrations.RunSQL(insights.COUNTS_ADD_SQL, COUNTS_ADD_SQL_BEFORE),
        migrations.RunSQL(AUDIT_HASH_PLPGSQL, AUDIT_HASH_SQL),
        migrations.RunSQL(AUDIT_CHAIN_NAMED, AUDIT_CHAIN_LOOKUP),
        migrations.AlterField(
            model_name="label",
            name="task",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="labels",
                to="annotations.task",
            ),
        ),
        migrations.AlterField(
            model_name="task",
            name="project",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="tasks",
                to="annotations.project",
            ),
        ),
    ]
