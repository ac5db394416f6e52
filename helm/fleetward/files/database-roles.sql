-- One PostgreSQL role per fleetward workload, each with only what it needs,
-- none a superuser. Run by the chart's Job (templates/database-roles.yaml)
-- as the database's admin, after every install and upgrade: safe to re-run.
--
--   fleetward_gateway_app    the gateway: schema fleetward_gateway (audit
--                            trail, replay window), nothing else
--   fleetward_encryptor_app  the station encryptor and the telemetry writer:
--                            the station and telemetry tables in public
--   fleetward_billing_app    billing: schema fleetward_billing
--
-- No role can read or change another's tables, create roles or databases,
-- or run programs or read files on the server (COPY ... TO PROGRAM needs
-- pg_execute_server_program, which none is granted).
--
-- Passwords come from the environment (psql's \getenv), never from the
-- command line: FLEETWARD_GATEWAY_PASSWORD, FLEETWARD_ENCRYPTOR_PASSWORD,
-- FLEETWARD_BILLING_PASSWORD.
\set ON_ERROR_STOP on
\getenv gateway_password FLEETWARD_GATEWAY_PASSWORD
\getenv encryptor_password FLEETWARD_ENCRYPTOR_PASSWORD
\getenv billing_password FLEETWARD_BILLING_PASSWORD

-- A failed statement below would be written to the server log with its
-- text, passwords included: not in this session (a superuser may set it;
-- a managed database's admin may not, and its log is the provider's).
DO $$ BEGIN
    PERFORM set_config('log_min_error_statement', 'panic', false);
    PERFORM set_config('log_statement', 'none', false);
EXCEPTION WHEN insufficient_privilege THEN NULL;
END $$;

SELECT format('CREATE ROLE %I', r)
FROM unnest(ARRAY['fleetward_gateway_app', 'fleetward_encryptor_app', 'fleetward_billing_app']) AS r
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec

ALTER ROLE fleetward_gateway_app WITH LOGIN NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'gateway_password';
ALTER ROLE fleetward_encryptor_app WITH LOGIN NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'encryptor_password';
ALTER ROLE fleetward_billing_app WITH LOGIN NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'billing_password';
-- Only a superuser may change these three (a managed database's admin
-- may not even clear them), and a role is made without them: cleared only
-- where someone set one by hand.
DO $$
DECLARE r text;
BEGIN
    FOR r IN
        SELECT rolname FROM pg_roles
        WHERE rolname IN ('fleetward_gateway_app', 'fleetward_encryptor_app', 'fleetward_billing_app')
          AND (rolsuper OR rolreplication OR rolbypassrls)
    LOOP
        EXECUTE format('ALTER ROLE %I NOSUPERUSER NOREPLICATION NOBYPASSRLS', r);
    END LOOP;
END $$;
-- Unqualified names resolve in each workload's own schema (the
-- encryptor's is public), whatever schemas exist.
ALTER ROLE fleetward_gateway_app SET search_path = fleetward_gateway;
ALTER ROLE fleetward_encryptor_app SET search_path = public;
ALTER ROLE fleetward_billing_app SET search_path = fleetward_billing;

-- Members of no other role (pg_execute_server_program, pg_read_all_data,
-- ...): whatever was granted to them by hand is taken back.
DO $$
DECLARE m record;
BEGIN
    FOR m IN
        SELECT g.rolname AS granted, u.rolname AS member
        FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles u ON u.oid = a.member
        WHERE u.rolname IN ('fleetward_gateway_app', 'fleetward_encryptor_app', 'fleetward_billing_app')
    LOOP
        EXECUTE format('REVOKE %I FROM %I', m.granted, m.member);
    END LOOP;
END $$;

-- A managed database's admin is no superuser: it must be a member of a
-- role to hand objects to it.
DO $$
DECLARE r text;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        FOREACH r IN ARRAY ARRAY['fleetward_gateway_app', 'fleetward_encryptor_app', 'fleetward_billing_app'] LOOP
            IF NOT pg_has_role(current_user, r, 'MEMBER') THEN
                EXECUTE format('GRANT %I TO %I', r, current_user);
            END IF;
        END LOOP;
    END IF;
END $$;

-- Connect, and (gateway, billing) create their own schema: the migrators
-- run CREATE SCHEMA IF NOT EXISTS, which checks this grant first.
SELECT format('GRANT CONNECT ON DATABASE %I TO fleetward_gateway_app, fleetward_encryptor_app, fleetward_billing_app', current_database()) \gexec
SELECT format('GRANT CREATE ON DATABASE %I TO fleetward_gateway_app, fleetward_billing_app', current_database()) \gexec

CREATE SCHEMA IF NOT EXISTS fleetward_gateway AUTHORIZATION fleetward_gateway_app;
ALTER SCHEMA fleetward_gateway OWNER TO fleetward_gateway_app;
CREATE SCHEMA IF NOT EXISTS fleetward_billing AUTHORIZATION fleetward_billing_app;
ALTER SCHEMA fleetward_billing OWNER TO fleetward_billing_app;

-- public: only the encryptor (its tables) creates there; PostgreSQL
-- before 15 let every role. Billing keeps its migration record in its own
-- schema (an older release's in public it moves there itself).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM fleetward_billing_app;
GRANT USAGE, CREATE ON SCHEMA public TO fleetward_encryptor_app;
GRANT USAGE ON SCHEMA public TO fleetward_billing_app;

-- Objects made before there were roles (by the admin, which every
-- workload used) go to their workload. Owned sequences follow their table.
DO $$
DECLARE
    t record;
    encryptor_tables text[];
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS rel, n.nspname AS schema
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('fleetward_gateway', 'fleetward_billing') AND c.relkind IN ('r', 'p', 'v', 'm')
          AND pg_get_userbyid(c.relowner) <> n.nspname || '_app'
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO %I', t.rel, t.schema || '_app');
    END LOOP;

    IF to_regclass('public._fleetward_billing_migrations') IS NOT NULL THEN
        ALTER TABLE public._fleetward_billing_migrations OWNER TO fleetward_billing_app;
    END IF;

    -- The encryptor's: its migration record, its two registries and the
    -- tables they list, and the functions that make those tables.
    encryptor_tables := ARRAY['_fleetward_encryptor_migrations', 'fleetward_station_tables', 'fleetward_telemetry_tables'];
    IF to_regclass('public.fleetward_station_tables') IS NOT NULL THEN
        encryptor_tables := encryptor_tables || ARRAY(SELECT name FROM public.fleetward_station_tables);
    END IF;
    IF to_regclass('public.fleetward_telemetry_tables') IS NOT NULL THEN
        encryptor_tables := encryptor_tables || ARRAY(SELECT name FROM public.fleetward_telemetry_tables);
    END IF;
    FOR t IN
        SELECT c.oid::regclass AS rel
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname = ANY (encryptor_tables)
          AND pg_get_userbyid(c.relowner) <> 'fleetward_encryptor_app'
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO fleetward_encryptor_app', t.rel);
    END LOOP;
    FOR t IN
        SELECT p.oid::regprocedure AS fn
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND p.proname LIKE 'fleetward\_ensure\_%'
          AND pg_get_userbyid(p.proowner) <> 'fleetward_encryptor_app'
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO fleetward_encryptor_app', t.fn);
    END LOOP;
END $$;
