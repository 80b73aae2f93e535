"""Static checks of docker/: no Docker engine runs in CI, so the files are checked for agreement.

The compose file must parse; every image it builds must have a Dockerfile whose copied files
exist; every variable it reads must be in ``docker/.env.example`` and every variable there must be
read; the example holds no real secret; the ``LMRECSYS_*`` and ``AIRFLOW__*`` settings must be
options the code and Airflow actually have, and must parse; and hosts and ports must point at
services that listen on them. The entrypoint script and ``bentoml build`` run for real.
Least privilege (MLflow authentication, one MLflow user and one PostgreSQL role per service) is
checked in ``test_docker_least_privilege.py``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from components.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOCKER = PROJECT_ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
BENTOFILE = DOCKER / "bentofile.yaml"
PLACEHOLDER = "change-me"
SERVICE_IMPORT = "serving.service:RecommenderService"
AIRFLOW_ROLES = {"api-server", "scheduler", "dag-processor", "triggerer"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY$")
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# ---------------------------------------------------------------------------- parsing
def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file (comments and blank lines skipped)."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path.name} line {number} is not KEY=VALUE: {line!r}"
        assert key not in values, f"{path.name} sets {key} twice"
        values[key] = value
    return values


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` substitution, ``$$`` kept as ``$``."""

    def substitute(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        # The colon forms treat an empty value like an unset one.
        missing = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if missing else current
        if op in (":?", "?") and missing:
            raise KeyError(f"{name} is required: {arg}")
        return current or ""

    return VARIABLE.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def walk_strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(key)
            yield from walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_strings(value)


def command_args(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def flag_value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def settings_field_exists(env_name: str) -> bool:
    """Whether ``LMRECSYS_A__B`` names a field of :class:`Settings` (``a.b``)."""
    model = Settings
    parts = env_name.removeprefix("LMRECSYS_").lower().split("__")
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if depth < len(parts) - 1:
            if not (isinstance(annotation, type) and hasattr(annotation, "model_fields")):
                return False
            model = annotation
    return True


def dag_env_names() -> set[str]:
    """LMRECSYS_* variables the DAG files read directly (schedules, intervals, shard counts)."""
    names = set()
    for path in (PROJECT_ROOT / "dags").glob("*.py"):
        names |= set(re.findall(r"environ\.get\(\s*[\"'](LMRECSYS_[A-Z0-9_]+)", path.read_text()))
    return names


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    joined, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            joined.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in joined]


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


def service_env(service: dict, env: dict[str, str]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value), env) for key, value in raw.items()}


def created_databases(postgres_env: dict[str, str]) -> set[str]:
    """The databases docker/postgres/roles.sql creates: the postgres service's ``*_DB`` variables."""
    return {value for key, value in postgres_env.items() if key.endswith("_DB") and key != "POSTGRES_DB"}


def airflow_services(services: dict) -> dict[str, dict]:
    return {name: s for name, s in services.items() if command_args(s)[:1] == ["airflow"]}


# ---------------------------------------------------------------------------- the compose file
def test_compose_has_every_component(services):
    roles = {flag for s in airflow_services(services).values() for flag in AIRFLOW_ROLES if flag in command_args(s)}
    assert roles == AIRFLOW_ROLES
    workers = [n for n, s in services.items() if command_args(s)[:3] == ["airflow", "celery", "worker"]]
    assert len(workers) >= 2, f"expected at least two Celery workers, found {workers}"
    assert any(command_args(s)[:3] == ["airflow", "db", "migrate"] for s in services.values()), (
        "no service migrates Airflow's database"
    )
    assert {"postgres", "redis", "mlflow", "serving"} <= set(services)
    assert command_args(services["mlflow"])[:2] == ["mlflow", "server"]
    assert SERVICE_IMPORT in command_args(services["serving"])


def test_every_service_has_an_image_and_its_build_files_exist(services):
    for name, service in services.items():
        assert "image" in service or "build" in service, f"service {name} has neither image nor build"
        if "build" not in service:
            continue
        context = (DOCKER / service["build"]["context"]).resolve()
        dockerfile = context / service["build"].get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"service {name}: {dockerfile} does not exist"
        for instruction, args in dockerfile_instructions(dockerfile):
            if instruction not in ("COPY", "ADD") or "--from=" in args:
                continue
            sources = [part for part in shlex.split(args) if not part.startswith("--")][:-1]
            for source in sources:
                assert list(context.glob(source)), (
                    f"{dockerfile.relative_to(PROJECT_ROOT)} copies {source}, "
                    f"which is not in the build context {context}"
                )


def test_all_airflow_components_share_one_image(services):
    images = {s.get("image") for s in airflow_services(services).values()}
    builds = {s["build"]["dockerfile"] for s in airflow_services(services).values()}
    assert len(images) == 1 and len(builds) == 1, (images, builds)


def test_depends_on_and_volumes_point_at_declared_things(compose, services):
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown service {target}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared_volumes, f"{name} mounts undeclared volume {source}"


# ---------------------------------------------------------------------------- variables and secrets
def test_env_example_and_compose_variables_agree(example_env):
    text = COMPOSE.read_text().replace("$$", "")
    referenced = {m["name"]: m["op"] for m in VARIABLE.finditer(text)}
    unused = sorted(set(example_env) - set(referenced))
    assert not unused, f"docker/.env.example sets variables compose.yaml never reads: {unused}"
    undeclared = sorted(name for name, op in referenced.items() if name not in example_env and op not in (":-", "-"))
    assert not undeclared, f"compose.yaml needs variables missing from docker/.env.example: {undeclared}"


def test_env_example_holds_no_real_secret(example_env):
    secrets = {key: value for key, value in example_env.items() if SECRET_NAME.search(key)}
    assert {
        "POSTGRES_PASSWORD",
        "AIRFLOW_DB_PASSWORD",
        "MLFLOW_DB_PASSWORD",
        "PIPELINE_DB_PASSWORD",
        "SERVING_DB_PASSWORD",
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "MLFLOW_PIPELINE_PASSWORD",
        "MLFLOW_SERVING_PASSWORD",
        "REDIS_PASSWORD",
        "AIRFLOW_JWT_SECRET",
        "LMRECSYS_SERVING__ADMIN_TOKEN",
        "LMRECSYS_PRIVACY__ERASURE_KEY",
    } <= set(secrets)
    assert example_env["LMRECSYS_SERVING__CLIENT_KEYS"] == f'["{PLACEHOLDER}"]'  # a JSON list
    real = {key: value for key, value in secrets.items() if value != PLACEHOLDER}
    assert not real, f"docker/.env.example must hold only the {PLACEHOLDER!r} placeholder for secrets: {sorted(real)}"


def test_compose_never_hardcodes_a_credential(compose):
    for text in walk_strings(compose["services"]):
        for url in re.findall(r"[a-z+]+://\S+", text):
            userinfo = urlsplit(url.replace("${", "{").replace("}", "")).netloc.rpartition("@")[0]
            if ":" in userinfo:
                password = userinfo.split(":", 1)[1]
                assert password.startswith("{"), f"compose.yaml has a literal password in {url}"
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) and key != "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE":
                assert str(value).startswith("${"), f"{key} must come from docker/.env, not be written in compose.yaml"


# ---------------------------------------------------------------------------- settings and topology
def test_lmrecsys_variables_are_real_settings(services, example_env):
    known_dag_names = dag_env_names()
    names = set(example_env) | {key for s in services.values() for key in (s.get("environment") or {})}
    for name in sorted(
        n for n in names if n.startswith("LMRECSYS_") and n not in ("LMRECSYS_IMAGE_PREFIX", "LMRECSYS_IMAGE_TAG")
    ):
        assert settings_field_exists(name) or name in known_dag_names, (
            f"{name} is neither a Settings field nor read by a DAG file"
        )


def test_service_environments_parse_as_settings(services, example_env, monkeypatch):
    for name in ("airflow-worker-1", "feedback-init", "serving"):
        env = service_env(services[name], example_env)
        for key in [k for k in os.environ if k.startswith("LMRECSYS_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith("LMRECSYS_"):
                monkeypatch.setenv(key, value)
        settings = Settings()
        tracking = urlsplit(settings.tracking_uri)
        mlflow_args = command_args(services["mlflow"])
        assert tracking.hostname in services and tracking.hostname == "mlflow", settings.tracking_uri
        assert str(tracking.port) == flag_value(mlflow_args, "--port")
        feedback = urlsplit(settings.feedback_url)
        assert feedback.scheme.startswith("postgresql") and feedback.hostname == "postgres"
        databases = created_databases(service_env(services["postgres"], example_env))
        assert feedback.path.lstrip("/") in databases, f"the feedback database {feedback.path} is never created"
        assert str(settings.root) == "/data"
        if name == "serving":
            assert settings.serving.production, "the deployed service must run in production mode"
            assert not settings.experiments.auto_decide, "serving may not write the registry, so it must not decide"
        else:  # the workers run lm_recsys_experiments, whose schedule the dag-processor reads from the same block
            assert settings.experiments.decide_interval_s == 300.0
    assert services["serving"].get("environment", {}).get("LMRECSYS_SERVING__ADMIN_TOKEN")
    assert ":?" in services["serving"]["environment"]["LMRECSYS_SERVING__CLIENT_KEYS"]  # production mode needs keys
    assert ":?" in services["serving"]["environment"]["LMRECSYS_PRIVACY__ERASURE_KEY"]


def test_airflow_settings_are_real_options_and_agree(services, example_env):
    from airflow.configuration import conf

    described = conf.configuration_description
    databases = created_databases(service_env(services["postgres"], example_env))
    for name, service in airflow_services(services).items():
        env = service_env(service, example_env)
        for key in (k for k in env if k.startswith("AIRFLOW__")):
            section, option = key.removeprefix("AIRFLOW__").lower().split("__", 1)
            assert option in described.get(section, {}).get("options", {}), f"{name}: {key} is not an Airflow option"
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
        assert broker.hostname == "redis" and broker.password == example_env["REDIS_PASSWORD"]
        metadata = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert metadata.hostname == "postgres" and metadata.path.lstrip("/") in databases
        execution = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        api_args = command_args(services[execution.hostname])
        assert "api-server" in api_args and str(execution.port) == flag_value(api_args, "--port")
        dags_folder = env.get("AIRFLOW__CORE__DAGS_FOLDER") or _dockerfile_env(service)["AIRFLOW__CORE__DAGS_FOLDER"]
        assert dags_folder == "/opt/lm-recsys/dags"
        assert any(m.split(":")[1] == "/data" for m in service["volumes"]), f"{name} does not mount the data root"


def _dockerfile_env(service: dict) -> dict[str, str]:
    path = (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
    env = {}
    for instruction, args in dockerfile_instructions(path):
        if instruction == "ENV":
            env.update(part.split("=", 1) for part in shlex.split(args))
    return env


def test_published_ports_match_what_the_services_listen_on(services, example_env):
    for name, service in services.items():
        for mapping in service.get("ports", []):
            container_port = interpolate(str(mapping), example_env).rsplit(":", 1)[1]
            assert flag_value(command_args(service), "--port") == container_port, (
                f"{name} publishes {container_port} but listens elsewhere"
            )
            probe = " ".join(walk_strings(service.get("healthcheck", {})))
            assert f"localhost:{container_port}" in probe, f"{name}'s health check does not probe port {container_port}"


# ---------------------------------------------------------------------------- images
def test_python_images_pin_torch_cpu_and_use_the_constraints():
    pins = constraint_pins()
    for dockerfile in (DOCKER / "airflow" / "Dockerfile", DOCKER / "serving" / "Dockerfile"):
        text = dockerfile.read_text()
        assert "download.pytorch.org/whl/cpu" in text, f"{dockerfile} must install torch from the CPU index"
        version = re.search(r"ARG TORCH_VERSION=(\S+)", text)[1]
        assert pins["torch"].split("+")[0] == version, (
            f"{dockerfile} pins torch {version}, constraints.txt {pins['torch']}"
        )
        assert "pip install -c constraints.txt" in text
    assert re.search(
        r'-c /opt/mlflow-constraints.txt "?mlflow\[auth\]"? ', (DOCKER / "mlflow" / "Dockerfile").read_text()
    )


def test_bentofile_builds_the_service_with_the_tested_pins():
    config = yaml.safe_load(BENTOFILE.read_text())
    assert config["service"] == SERVICE_IMPORT
    module_name, class_name = SERVICE_IMPORT.split(":")
    module = __import__(module_name, fromlist=[class_name])
    assert hasattr(getattr(module, class_name), "to_asgi"), "the bentofile's service is not a BentoML service"
    pins = constraint_pins()
    for requirement in config["python"]["packages"]:
        name, sep, version = requirement.partition("==")
        if sep:
            key = re.sub(r"[-_.]+", "-", name).lower()
            assert pins[key].split("+")[0] == version, (
                f"bentofile pins {requirement}, constraints.txt {key}=={pins[key]}"
            )
    for package in ("components", "serving"):
        assert any(pattern.startswith(f"{package}/") for pattern in config["include"])


def test_the_web_page_is_packaged_with_the_service():
    """serving/static/ holds no Python, so both the wheel (package-data) and the bento (include
    patterns) must name it; the service reads the page at start."""
    import fnmatch
    import tomllib

    files = (PROJECT_ROOT / "serving" / "static").rglob("*")
    static = sorted(path.relative_to(PROJECT_ROOT / "serving").as_posix() for path in files if path.is_file())
    assert "static/index.html" in static
    setuptools = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data = setuptools["package-data"]["serving"]
    include = yaml.safe_load(BENTOFILE.read_text())["include"]
    for path in static:
        assert any(fnmatch.fnmatch(path, pattern) for pattern in package_data), f"serving/{path} is not in the wheel"
        in_bento = any(fnmatch.fnmatch(f"serving/{path}", pattern) for pattern in include)
        assert in_bento, f"serving/{path} is not in the bento"


# ---------------------------------------------------------------------------- scripts, run for real
def run_entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), *command],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_entrypoint_refuses_placeholder_secrets(example_env):
    refused = run_entrypoint(
        {"POSTGRES_PASSWORD": example_env["POSTGRES_PASSWORD"], "OTHER": "fine"}, "echo", "started"
    )
    assert refused.returncode == 64
    assert "POSTGRES_PASSWORD" in refused.stderr and "OTHER" not in refused.stderr
    assert "started" not in refused.stdout


def test_entrypoint_writes_the_airflow_password_file_and_runs_the_command(tmp_path):
    passwords = tmp_path / "home" / "passwords.json"
    env = {"AIRFLOW_ADMIN_PASSWORD": 'pa"ss', "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)}
    result = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "echo", "started"],
        env={"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"
    assert json.loads(passwords.read_text()) == {"admin": 'pa"ss'}
    assert passwords.stat().st_mode & 0o077 == 0


@pytest.mark.slow
def test_bentoml_build_packages_the_service(tmp_path):
    """``bentoml build`` works offline (no package locking) and packs the service's code."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = Path(sys.executable).parent / "bentoml"
    result = subprocess.run(
        [str(bentoml), "build", "-f", str(BENTOFILE), str(PROJECT_ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (bento_dir,) = [p for p in (tmp_path / "bentoml" / "bentos" / "lm-recsys-serving").iterdir() if p.is_dir()]
    manifest = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert manifest["service"] == SERVICE_IMPORT
    assert (bento_dir / "src" / "serving" / "service.py").is_file() and (
        bento_dir / "src" / "components" / "engine" / "engine.py"
    ).is_file()
    for module in ("schemas", "middleware", "champion", "feedback_writer", "batching", "bentoml_patch"):
        assert (bento_dir / "src" / "serving" / f"{module}.py").is_file(), module
    assert "<h1>lm-recsys</h1>" in (bento_dir / "src" / "serving" / "static" / "index.html").read_text()
    assert not (bento_dir / "src" / "tests").exists()
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "download.pytorch.org/whl/cpu" in requirements
