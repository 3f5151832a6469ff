-- What PgBouncer (pgbouncer.enabled) needs in the operator's database, once, as a superuser:
--   psql -d <database> -f pgbouncer-auth.sql
-- then give the role the password of the chart's PgBouncer Secret:  \password optuna_pgbouncer
--
-- The operator creates a role per namespace at run time, so PgBouncer cannot list them in a
-- file: it looks each one up (auth_query) through this function as optuna_pgbouncer, which
-- needs no other privilege. SECURITY DEFINER lets it read pg_authid (superuser only), and
-- only the SCRAM verifiers of the operator's tenant roles come back: never a superuser's or
-- any other role's. PgBouncer then logs in to PostgreSQL as the tenant role with the keys
-- from the client's own SCRAM exchange; no tenant password is stored anywhere else.
-- Idempotent: running it again changes nothing.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'optuna_pgbouncer') THEN
    CREATE ROLE optuna_pgbouncer LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
  END IF;
END
$$;
CREATE SCHEMA IF NOT EXISTS optuna_pgbouncer;
REVOKE ALL ON SCHEMA optuna_pgbouncer FROM PUBLIC;
GRANT USAGE ON SCHEMA optuna_pgbouncer TO optuna_pgbouncer;
-- A set, not a record: a role that is not a tenant's gives no row (a record would be a row of
-- NULLs, which PgBouncer reports as a configuration error instead of a failed login).
CREATE OR REPLACE FUNCTION optuna_pgbouncer.user_lookup(p_username text)
RETURNS TABLE (uname text, phash text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog
AS $$
  SELECT rolname::text, rolpassword
  FROM pg_catalog.pg_authid
  WHERE rolname = p_username
    AND rolname LIKE 'optuna\_rw\_%'
    AND rolcanlogin AND NOT rolsuper AND NOT rolcreaterole AND NOT rolcreatedb
    AND (rolvaliduntil IS NULL OR rolvaliduntil > now())
$$;
REVOKE ALL ON FUNCTION optuna_pgbouncer.user_lookup(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION optuna_pgbouncer.user_lookup(text) TO optuna_pgbouncer;
