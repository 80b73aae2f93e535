"""Least privilege in docker/: MLflow runs with authentication and every service has its own
MLflow user and its own PostgreSQL role, none of them the superuser or the admin.

No Docker engine runs here, so the compose file, docker/postgres/roles.sql, the init script and
docker/mlflow/ are parsed; the entrypoint's auth-config step runs for real, and (integration)
the init script runs against a real PostgreSQL and each role is tried for what it may and may
not do.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.unit import test_docker_files as docker_files
from tests.unit.test_docker_files import DOCKER, command_args, service_env, walk_strings

# The compose file, its services and docker/.env.example, as the other docker tests read them.
compose, services, example_env = docker_files.compose, docker_files.services, docker_files.example_env

ROLES_SQL = DOCKER / "postgres" / "roles.sql"
INIT_SCRIPT = DOCKER / "postgres" / "init-databases.sh"
AUTH_INI = DOCKER / "mlflow" / "basic_auth.ini"
BOOTSTRAP = DOCKER / "mlflow" / "bootstrap_users.py"
REGISTRY_CLIENTS = ("airflow-worker-1", "airflow-worker-2", "serving")
"""The services that talk to MLflow (Airflow's tasks run on the workers)."""


def postgres_urls(env: dict[str, str]) -> dict[str, object]:
    """Every PostgreSQL URL in a service's environment, by variable."""
    return {key: urlsplit(v) for key, v in env.items() if re.match(r"(db\+)?postgres(ql)?(\+\w+)?://", v)}


def roles_sql() -> str:
    return "\n".join(line.split("--", 1)[0] for line in ROLES_SQL.read_text().splitlines())


# ---------------------------------------------------------------------------- MLflow
def test_mlflow_runs_with_basic_auth_and_no_secret_in_its_config(services, example_env):
    args = command_args(services["mlflow"])
    assert args[:2] == ["mlflow", "server"] and args[args.index("--app-name") + 1] == "basic-auth"
    env = service_env(services["mlflow"], example_env)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == example_env["MLFLOW_ADMIN_PASSWORD"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == example_env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    auth_store = urlsplit(env["MLFLOW_AUTH_DATABASE_URI"])
    assert (
        auth_store.username == example_env["MLFLOW_DB_USER"] and auth_store.path == f"/{example_env['MLFLOW_AUTH_DB']}"
    )
    config = configparser.ConfigParser()
    config.read(AUTH_INI)
    assert config["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert "admin_password" not in config["mlflow"], "the admin password must come from docker/.env"
    assert config["mlflow"]["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    dockerfile = (DOCKER / "mlflow" / "Dockerfile").read_text()
    assert "MLFLOW_AUTH_CONFIG_TEMPLATE=/opt/mlflow/basic_auth.ini" in dockerfile
    assert "MLFLOW_AUTH_CONFIG_PATH=" in dockerfile and "lmrecsys-entrypoint" in dockerfile


def test_each_registry_client_signs_in_as_its_own_user(services, example_env):
    admin = example_env["MLFLOW_ADMIN_USER"]
    users = {}
    for name in REGISTRY_CLIENTS:
        env = service_env(services[name], example_env)
        assert urlsplit(env["LMRECSYS_REGISTRY__TRACKING_URI"]).hostname == "mlflow"
        assert env["MLFLOW_TRACKING_USERNAME"] != admin, f"{name} signs in to MLflow as the admin"
        users[name] = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    assert (
        users["airflow-worker-1"]
        == users["airflow-worker-2"]
        == (
            example_env["MLFLOW_PIPELINE_USER"],
            example_env["MLFLOW_PIPELINE_PASSWORD"],
        )
    )
    assert users["serving"] == (example_env["MLFLOW_SERVING_USER"], example_env["MLFLOW_SERVING_PASSWORD"])
    assert users["serving"][0] != users["airflow-worker-1"][0]
    bootstrap = service_env(services["mlflow-init"], example_env)  # creates exactly these users
    assert (bootstrap["MLFLOW_TRACKING_USERNAME"], bootstrap["MLFLOW_TRACKING_PASSWORD"]) == (
        admin,
        example_env["MLFLOW_ADMIN_PASSWORD"],
    )
    assert (bootstrap["MLFLOW_PIPELINE_USER"], bootstrap["MLFLOW_PIPELINE_PASSWORD"]) == users["airflow-worker-1"]
    assert (bootstrap["MLFLOW_SERVING_USER"], bootstrap["MLFLOW_SERVING_PASSWORD"]) == users["serving"]
    assert command_args(services["mlflow-init"])[-1] == "/opt/mlflow/bootstrap_users.py"
    assert services["mlflow-init"]["depends_on"]["mlflow"]["condition"] == "service_healthy"


def test_serving_may_only_read_the_registry():
    spec = importlib.util.spec_from_file_location("bootstrap_users", BOOTSTRAP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.GRANTS == {"MLFLOW_PIPELINE": "MANAGE", "MLFLOW_SERVING": "READ"}
    assert set(module.RESOURCE_TYPES) == {"experiment", "registered_model"}


def test_online_experiments_are_decided_where_the_registry_may_be_written(services, example_env):
    """Serving (READ on the registry) serves both arms but never acts on a decision; the workers, which
    sign in as the MANAGE user, decide through the lm_recsys_experiments DAG."""
    serving = service_env(services["serving"], example_env)
    assert serving["LMRECSYS_EXPERIMENTS__AUTO_DECIDE"] == "false"
    assert serving["MLFLOW_TRACKING_USERNAME"] == example_env["MLFLOW_SERVING_USER"]  # the READ user
    assert (docker_files.PROJECT_ROOT / "dags" / "lm_recsys_experiments.py").is_file()
    interval = example_env["LMRECSYS_EXPERIMENTS__DECIDE_INTERVAL_S"]
    for name, service in services.items():
        if command_args(service)[:1] == ["airflow"]:  # the dag-processor reads the schedule, workers run it
            env = service_env(service, example_env)
            assert env["LMRECSYS_EXPERIMENTS__DECIDE_INTERVAL_S"] == interval, name
            assert env["MLFLOW_TRACKING_USERNAME"] == example_env["MLFLOW_PIPELINE_USER"], name  # the MANAGE user


def test_services_wait_for_their_users_roles_and_tables(services):
    for name in REGISTRY_CLIENTS:
        needs = services[name]["depends_on"]
        for init in ("mlflow-init", "feedback-init"):
            assert needs[init]["condition"] == "service_completed_successfully", f"{name} does not wait for {init}"


# ---------------------------------------------------------------------------- PostgreSQL
def test_no_service_connects_to_postgres_as_the_superuser(services, example_env):
    superuser = example_env["POSTGRES_USER"]
    postgres_env = service_env(services["postgres"], example_env)
    passwords = {
        postgres_env[f"{prefix}_USER"]: postgres_env[f"{prefix}_PASSWORD"]
        for prefix in ("AIRFLOW_DB", "MLFLOW_DB", "PIPELINE_DB", "SERVING_DB")
    }
    assert len(passwords) == 4 and superuser not in passwords
    seen = {}
    for name, service in services.items():
        for key, url in postgres_urls(service_env(service, example_env)).items():
            assert url.username != superuser, f"{name}'s {key} connects as the superuser"
            assert url.password == passwords[url.username], f"{name}'s {key}: not the password roles.sql sets"
            seen[(name, key)] = (url.username, url.path.lstrip("/"))
    role = {k: example_env[k] for k in ("AIRFLOW_DB_USER", "MLFLOW_DB_USER", "PIPELINE_DB_USER", "SERVING_DB_USER")}
    db = {k: example_env[k] for k in ("AIRFLOW_DB", "MLFLOW_DB", "MLFLOW_AUTH_DB", "FEEDBACK_DB")}
    assert seen[("airflow-scheduler", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")] == (
        role["AIRFLOW_DB_USER"],
        db["AIRFLOW_DB"],
    )
    assert seen[("airflow-worker-1", "AIRFLOW__CELERY__RESULT_BACKEND")] == (role["AIRFLOW_DB_USER"], db["AIRFLOW_DB"])
    assert seen[("airflow-worker-1", "LMRECSYS_FEEDBACK__URL")] == (role["PIPELINE_DB_USER"], db["FEEDBACK_DB"])
    assert seen[("feedback-init", "LMRECSYS_FEEDBACK__URL")] == (role["PIPELINE_DB_USER"], db["FEEDBACK_DB"])
    assert seen[("serving", "LMRECSYS_FEEDBACK__URL")] == (role["SERVING_DB_USER"], db["FEEDBACK_DB"])
    assert seen[("mlflow", "MLFLOW_BACKEND_STORE_URI")] == (role["MLFLOW_DB_USER"], db["MLFLOW_DB"])
    assert seen[("mlflow", "MLFLOW_AUTH_DATABASE_URI")] == (role["MLFLOW_DB_USER"], db["MLFLOW_AUTH_DB"])
    assert not [k for k in seen if k[0] == "serving" and k[1] != "LMRECSYS_FEEDBACK__URL"]


def test_roles_sql_gives_each_role_only_what_it_needs():
    sql = roles_sql()
    roles = re.findall(r'CREATE ROLE :"(\w+)" ([^;]+);', sql)
    assert {r for r, _ in roles} == {"airflow_user", "mlflow_user", "pipeline_user", "serving_user"}
    for role, options in roles:
        words = options.split()
        for flag in ("LOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "NOREPLICATION", "NOBYPASSRLS"):
            assert flag in words, f"{role} lacks {flag}"
        assert words[-2:] == ["PASSWORD", f":'{role.removesuffix('_user')}_password'"], options
    owners = dict(re.findall(r'CREATE DATABASE :"(\w+)" OWNER :"(\w+)";', sql))
    assert owners == {
        "airflow_db": "airflow_user",
        "mlflow_db": "mlflow_user",
        "mlflow_auth_db": "mlflow_user",
        "feedback_db": "pipeline_user",
    }
    assert set(re.findall(r'REVOKE ALL ON DATABASE :"(\w+)" FROM PUBLIC;', sql)) == set(owners)
    grants = re.findall(r"GRANT ([^;]+?) TO :\"serving_user\";", sql)
    granted = {g.split(" ON ")[0].strip(): g.split(" ON ", 1)[1] for g in grants}
    assert granted["CONNECT"] == 'DATABASE :"feedback_db"'
    privileges = {p.strip() for g in grants for p in g.split(" ON ")[0].split(",")}
    assert privileges <= {"CONNECT", "USAGE", "SELECT", "INSERT"}, privileges
    for forbidden in ("UPDATE", "DELETE", "TRUNCATE", "ALL PRIVILEGES", "CREATE", "REFERENCES", "TRIGGER"):
        assert not re.search(rf"GRANT [^;]*\b{forbidden}\b[^;]* TO :\"serving_user\"", sql), forbidden
    assert 'pipeline_user" IN SCHEMA public GRANT SELECT, INSERT ON TABLES TO :"serving_user"' in sql
    assert not re.search(r"\bSUPERUSER\b(?<!NOSUPERUSER)", sql.replace("NOSUPERUSER", ""))


def test_the_init_script_passes_every_variable_roles_sql_reads(services, example_env):
    script = INIT_SCRIPT.read_text()
    passed = dict(re.findall(r'-v (\w+)="\$\{(\w+)', script))
    used = set(re.findall(r":[\"'](\w+)[\"']", roles_sql()))
    assert used == set(passed), (sorted(used), sorted(passed))
    postgres_env = service_env(services["postgres"], example_env)
    missing = sorted(name for name in passed.values() if name not in postgres_env)
    assert not missing, f"compose does not give the postgres service {missing}"
    mounts = services["postgres"]["volumes"]
    assert "./postgres/init-databases.sh:/docker-entrypoint-initdb.d/10-init-databases.sh:ro" in mounts
    assert "./postgres/roles.sql:/opt/lmrecsys/roles.sql:ro" in mounts
    assert "/opt/lmrecsys/roles.sql" in script


def test_no_default_looks_like_a_real_secret(compose):
    """A missing secret stops compose (``${VAR:?}``) instead of falling back to a written default."""
    for text in walk_strings(compose["services"]):
        text = text.replace("$$", "")  # $${VAR}: the container's shell reads VAR, compose does not
        for name, op, default in re.findall(r"\$\{(\w+)(:?[-?])?([^}]*)\}", text):
            if re.search(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY$", name):
                assert op in (":?", "?"), f"{name} has a default ({default!r}) instead of being required"


# ---------------------------------------------------------------------------- run for real
def test_entrypoint_writes_the_mlflow_auth_config_from_the_environment(tmp_path):
    live = tmp_path / "home" / ".mlflow" / "basic_auth.ini"
    url = "postgresql://mlflow:p%40ss@postgres:5432/mlflow_auth"
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_AUTH_CONFIG_TEMPLATE": str(AUTH_INI),
        "MLFLOW_AUTH_CONFIG_PATH": str(live),
        "MLFLOW_AUTH_DATABASE_URI": url,
    }
    result = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "echo", "started"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and result.stdout.strip() == "started", result.stderr
    assert live.stat().st_mode & 0o077 == 0
    config = configparser.ConfigParser()  # as MLflow reads it (with %-interpolation)
    config.read(live)
    assert config["mlflow"]["database_uri"] == url
    assert config["mlflow"]["default_permission"] == "NO_PERMISSIONS"


@pytest.mark.integration
def test_init_script_roles_can_do_only_what_they_need(tmp_path):
    """roles.sql against the local PostgreSQL: each role connects where it should, serving reads
    and appends feedback and cannot change or drop anything."""
    sa = pytest.importorskip("sqlalchemy")
    if shutil.which("psql") is None:
        pytest.skip("psql (Debian package postgresql-client) is not installed")
    from components.feedback.store import FeedbackEvent, FeedbackStore

    tag = f"lmr{uuid.uuid4().hex[:8]}"
    names = {
        "AIRFLOW_DB": f"{tag}_airflow",
        "AIRFLOW_DB_USER": f"{tag}_airflow",
        "MLFLOW_DB": f"{tag}_mlflow",
        "MLFLOW_AUTH_DB": f"{tag}_mlflow_auth",
        "MLFLOW_DB_USER": f"{tag}_mlflow",
        "FEEDBACK_DB": f"{tag}_feedback",
        "PIPELINE_DB_USER": f"{tag}_pipeline",
        "SERVING_DB_USER": f"{tag}_serving",
    }
    secrets = {
        k: uuid.uuid4().hex
        for k in ("AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "PIPELINE_DB_PASSWORD", "SERVING_DB_PASSWORD")
    }
    env = {
        **os.environ,
        **names,
        **secrets,
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": "postgres",
        "PGHOST": "127.0.0.1",
    }
    env["LMRECSYS_ROLES_SQL"] = str(ROLES_SQL)
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-tAc"]

    def url(role: str, database: str) -> str:
        password = secrets[role.replace("_USER", "_PASSWORD")]
        return f"postgresql://{names[role]}:{password}@127.0.0.1:5432/{names[database]}"

    def allowed(engine, statement: str) -> bool:
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(statement))
            return True
        except sa.exc.DBAPIError:
            return False

    try:
        done = subprocess.run(["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        FeedbackStore(url("PIPELINE_DB_USER", "FEEDBACK_DB")).close()  # feedback-init: the owner creates the tables
        serving = FeedbackStore(url("SERVING_DB_USER", "FEEDBACK_DB"))
        try:
            assert serving.append([FeedbackEvent("u1", "i1", "click", event_id="e1")]) == [("e1", True)]
            assert serving.count() == 1
            # online experiments need no more: impressions, attributions, and records ended by an insert
            shown = {"arm": "champion", "model_version": "1", "endpoint": "recommend", "latency_ms": 1.0}
            serving.log_impressions([{**shown, "recommendation_id": "r1", "user_id": "u1", "item_ids": ["i1"]}])
            serving.append([FeedbackEvent("u1", "i1", "like", event_id="e2", recommendation_id="r1")])
            assert serving.attribution_counts()["attributed"] == 1
            record = {"experiment_id": "x1", "model_name": "m", "champion_version": "1", "challenger_version": "2"}
            serving.create_experiment(
                {**record, "share": 0.5, "mode": "split", "metric": "like_rate"}
                | {"max_days": 1.0, "created_by": "test"}
            )
            assert (
                serving.finish_experiment("x1", "stopped", "test", {})
                and serving.experiments()[0]["state"] == "stopped"
            )
            for statement in (
                "DELETE FROM feedback_events",
                "UPDATE feedback_events SET user_id = 'x'",
                "TRUNCATE feedback_events",
                "DROP TABLE feedback_events",
                "CREATE TABLE probe (x int)",
            ):
                assert not allowed(serving.engine, statement), f"serving may {statement}"
        finally:
            serving.close()
        for role, database, expected in (
            ("AIRFLOW_DB_USER", "AIRFLOW_DB", True),
            ("MLFLOW_DB_USER", "MLFLOW_DB", True),
            ("MLFLOW_DB_USER", "MLFLOW_AUTH_DB", True),
            ("SERVING_DB_USER", "AIRFLOW_DB", False),
            ("SERVING_DB_USER", "MLFLOW_DB", False),
            ("PIPELINE_DB_USER", "MLFLOW_DB", False),
            ("AIRFLOW_DB_USER", "FEEDBACK_DB", False),
        ):
            engine = sa.create_engine(url(role, database))
            try:
                ok = allowed(engine, "CREATE TABLE probe (x int); DROP TABLE probe")
            finally:
                engine.dispose()
            assert ok is expected, (
                f"{names[role]} on {names[database]}: expected {'allowed' if expected else 'refused'}"
            )
        superuser = subprocess.run(
            [
                *psql,
                f"SELECT rolname FROM pg_roles WHERE rolname LIKE '{tag}%' "
                "AND (rolsuper OR rolcreatedb OR rolcreaterole)",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert superuser.returncode == 0 and superuser.stdout.strip() == ""
    finally:
        for key in ("AIRFLOW_DB", "MLFLOW_DB", "MLFLOW_AUTH_DB", "FEEDBACK_DB"):
            subprocess.run(
                [*psql, f'DROP DATABASE IF EXISTS "{names[key]}" WITH (FORCE)'], capture_output=True, timeout=30
            )
        for key in ("AIRFLOW_DB_USER", "MLFLOW_DB_USER", "PIPELINE_DB_USER", "SERVING_DB_USER"):
            subprocess.run([*psql, f'DROP ROLE IF EXISTS "{names[key]}"'], capture_output=True, timeout=30)
