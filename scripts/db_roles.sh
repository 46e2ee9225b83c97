#!/usr/bin/env bash
# Create MedAnnot's two database roles and its database, idempotently (README, "Database roles"):
#   the owner role owns the database and its tables; `manage.py migrate` connects as it;
#   the app role (the web, the workers) reads and writes the tables, but on the audit trail
#   may only SELECT and INSERT; it owns nothing, so it can neither ALTER it nor disable its
#   triggers. Neither is a superuser or may create roles or databases.
# Connects as a superuser (MEDANNOT_DB_ADMIN_URL). Safe to run again at every start: it creates
# only what is missing, hands objects made earlier by another role to the owner, and grants.
#
#   MEDANNOT_DB_ADMIN_URL      postgresql://postgres@localhost:5432/postgres (a superuser)
#   MEDANNOT_DB_NAME           medannot
#   MEDANNOT_DB_OWNER_ROLE     medannot_owner
#   MEDANNOT_DB_APP_ROLE       medannot_app
#   MEDANNOT_DB_OWNER_PASSWORD, MEDANNOT_DB_APP_PASSWORD   unset: none (trust authentication)
set -euo pipefail

admin_url=${MEDANNOT_DB_ADMIN_URL:-postgresql://postgres@localhost:5432/postgres}
db=${MEDANNOT_DB_NAME:-medannot}
owner=${MEDANNOT_DB_OWNER_ROLE:-medannot_owner}
app=${MEDANNOT_DB_APP_ROLE:-medannot_app}

psql "$admin_url" -X -q -v ON_ERROR_STOP=1 \
  -v db="$db" -v owner="$owner" -v app="$app" \
  -v owner_password="${MEDANNOT_DB_OWNER_PASSWORD:-}" \
  -v app_password="${MEDANNOT_DB_APP_PASSWORD:-}" <<'SQL'
SELECT format('CREATE ROLE %I', r) FROM unnest(ARRAY[:'owner', :'app']) AS r
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \gexec
-- A login, and nothing more, whatever the roles were before.
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', r)
  FROM unnest(ARRAY[:'owner', :'app']) AS r \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'owner', :'owner_password')
 WHERE :'owner_password' <> '' \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'app', :'app_password')
 WHERE :'app_password' <> '' \gexec

SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'db', :'owner') \gexec

\connect :"db"
-- Tables and functions made before the roles existed (by a superuser) pass to the owner, so
-- that migrations run as the owner can alter them and the app role owns none.
SELECT set_config('medannot.owner', :'owner', false) \g /dev/null
DO $$
DECLARE
    owner text := current_setting('medannot.owner');
    item record;
BEGIN
    FOR item IN
        SELECT c.oid::regclass AS name,
               CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                   WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END AS kind
          FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace
           AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
           AND pg_get_userbyid(c.relowner) <> owner
           -- a column's sequence follows its table; an extension's objects stay its own
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                             AND d.objid = c.oid AND d.deptype IN ('a', 'i', 'e'))
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I', item.kind, item.name, owner);
    END LOOP;
    FOR item IN
        SELECT p.oid::regprocedure AS name
          FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND pg_get_userbyid(p.proowner) <> owner
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                             AND d.objid = p.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO %I', item.name, owner);
    END LOOP;
END
$$;

-- Only the owner creates tables (PostgreSQL before 15 let everyone).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"owner";
GRANT USAGE ON SCHEMA public TO :"app";
-- What the owner creates from now on (each migration) is the app's to read and write ...
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app";
-- ... and so is what exists already.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app";
-- ... except the audit trail: read and append only.
SELECT format('REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON annotations_auditevent '
              'FROM %I, PUBLIC', :'app')
 WHERE to_regclass('public.annotations_auditevent') IS NOT NULL \gexec
SQL
echo "database roles ready: $owner owns database $db; $app reads, writes and appends to the audit trail"
