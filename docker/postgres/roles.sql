-- One PostgreSQL role per service, each owning or granted only what it uses. Run once by
-- init-databases.sh as the superuser, connected to the "postgres" database, with these psql
-- variables (names and passwords from docker/.env):
--   airflow_db airflow_user airflow_password          Airflow's metadata (and Celery results)
--   mlflow_db mlflow_auth_db mlflow_user mlflow_password   MLflow's tracking store and user store
--   feedback_db pipeline_user pipeline_password       the feedback store, owned by the pipeline
--   serving_user serving_password                     serving: read and append feedback only
-- No role is a superuser or may create databases or roles; every database is closed to PUBLIC.
\set ON_ERROR_STOP on

CREATE ROLE :"airflow_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'airflow_password';
CREATE ROLE :"mlflow_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'mlflow_password';
CREATE ROLE :"pipeline_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'pipeline_password';
CREATE ROLE :"serving_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'serving_password';

-- Each database belongs to the service that creates its schema (Airflow's and MLflow's migrations,
-- the feedback store's create_all); in PostgreSQL 15+ its public schema belongs to that owner.
CREATE DATABASE :"airflow_db" OWNER :"airflow_user";
CREATE DATABASE :"mlflow_db" OWNER :"mlflow_user";
CREATE DATABASE :"mlflow_auth_db" OWNER :"mlflow_user";
CREATE DATABASE :"feedback_db" OWNER :"pipeline_user";

REVOKE ALL ON DATABASE :"airflow_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"mlflow_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"mlflow_auth_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"feedback_db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"feedback_db" TO :"serving_user";

-- The feedback store: the pipeline role creates the tables (the feedback-init service) and owns
-- them, so only it may alter, truncate or drop them. Serving may read every table and append
-- events (INSERT needs the sequences behind seq), and nothing else: no UPDATE, DELETE, TRUNCATE,
-- CREATE or DROP. The default privileges apply to every table the pipeline role creates later.
\connect :"feedback_db"
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"serving_user";
ALTER DEFAULT PRIVILEGES FOR ROLE :"pipeline_user" IN SCHEMA public GRANT SELECT, INSERT ON TABLES TO :"serving_user";
ALTER DEFAULT PRIVILEGES FOR ROLE :"pipeline_user" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO :"serving_user";
-- Tables that exist already (the script re-run on an older volume by hand):
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO :"serving_user";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"serving_user";
