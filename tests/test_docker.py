"""docker/: the compose file and the image, checked without a Docker engine.

The compose files must satisfy the Compose Specification's JSON schema (tests/data), run the
same server commands with the same settings as the server-mode integration test (flows/stack.py),
start services only once what they need is healthy, keep data in named volumes, and take every
credential from the environment. The Dockerfile must install the CPU build of the pinned torch
by default and the CUDA build on request, and copy what the image needs.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from flows.stack import SERVER_COMMANDS, database_urls, server_env

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
SCHEMA = json.loads((Path(__file__).parent / "data" / "compose_spec.json").read_text())
# The schema predates the top-level `name` key (added to the Compose Specification in 2022).
SCHEMA["properties"]["name"] = {"type": "string"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|AUTH", re.I)


def compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def schema_errors(document: dict) -> list[str]:
    validator = jsonschema.Draft201909Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml"])
def test_compose_files_follow_the_compose_specification(name):
    assert schema_errors(compose(name)) == []


def test_the_schema_check_catches_mistakes():
    broken = copy.deepcopy(compose())
    broken["services"]["mlflow"]["healthchek"] = broken["services"]["mlflow"].pop("healthcheck")
    broken["services"]["prefect-worker"]["depends_on"]["mlflow"]["condition"] = "healthy"
    errors = schema_errors(broken)
    assert any("healthchek" in e for e in errors)
    assert any("depends_on" in e for e in errors)


def test_services_run_the_integration_tests_commands():
    services = compose()["services"]
    for name, command in SERVER_COMMANDS.items():
        assert services[name]["command"] == command, name


def test_services_get_the_same_settings_as_the_integration_test():
    services = compose()["services"]
    urls = database_urls("pw", "postgres", 5432)
    prefect_env = services["prefect-server"]["environment"]
    mlflow_env = services["mlflow"]["environment"]
    assert set(server_env("prefect-server", "0.0.0.0", 4200)) <= set(prefect_env)
    assert set(server_env("mlflow", "0.0.0.0", 5000, "/mlartifacts")) <= set(mlflow_env)
    for settings in (
        server_env("prefect-server", "0.0.0.0", 4200),
        server_env("mlflow", "0.0.0.0", 5000),
    ):
        for key, value in settings.items():
            env = prefect_env if key in prefect_env else mlflow_env
            assert str(env[key]) == value, key
    # Same drivers and databases, the password from the environment.
    for key, env in (
        ("PREFECT_SERVER_DATABASE_CONNECTION_URL", prefect_env),
        ("MLFLOW_BACKEND_STORE_URI", mlflow_env),
    ):
        expected = urls[key].replace("pw", "${LLMPIPE_DB_PASSWORD:?}")
        assert env[key] == expected


def test_start_order_waits_for_health():
    services = compose()["services"]
    for name, service in services.items():
        if name != "deploy":  # a one-shot job: it exits
            assert "test" in service["healthcheck"], name
    needs = {name: service.get("depends_on", {}) for name, service in services.items()}
    assert needs["prefect-server"]["postgres"]["condition"] == "service_healthy"
    assert needs["mlflow"]["postgres"]["condition"] == "service_healthy"
    assert needs["deploy"]["prefect-server"]["condition"] == "service_healthy"
    assert needs["prefect-worker"]["deploy"]["condition"] == "service_completed_successfully"
    assert needs["prefect-worker"]["mlflow"]["condition"] == "service_healthy"
    # Each healthcheck asks the endpoint flows/stack.py waits for.
    assert "/api/health" in " ".join(services["prefect-server"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])


def test_state_lives_in_named_volumes():
    document = compose()
    declared = set(document["volumes"])
    used = set()
    for service in document["services"].values():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared == {"postgres-data", "mlflow-artifacts", "llmpipe-work"}
    mlflow = document["services"]["mlflow"]
    assert "mlflow-artifacts:/mlartifacts" in mlflow["volumes"]
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].endswith(":-/mlartifacts}")


def test_credentials_come_from_the_environment_only():
    text = (DOCKER / "compose.yaml").read_text()
    for service in compose()["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:[-?][^}]*)?\}", str(value)), key
    # Every URL with a password takes it from the environment.
    for user_info in re.findall(r"//([^/@\s]+)@", text):
        assert user_info.endswith(":${LLMPIPE_DB_PASSWORD:?}"), user_info
    dockerfile = (DOCKER / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith(("ENV", "ARG")):
            assert not SECRET_NAME.search(line), line
    ignored = (REPO / ".gitignore").read_text().split()
    assert ".env" in ignored or "docker/.env" in ignored


def test_dockerfile_installs_the_pinned_torch_cpu_by_default():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pinned = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch"))
    assert pinned == "torch==" + re.search(r"ARG TORCH_VERSION=(\S+)", dockerfile).group(1)
    assert re.search(r"ARG TORCH_VARIANT=cpu\b", dockerfile)
    assert 'cpu)  index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"' in dockerfile
    assert "cuda) index=" in dockerfile
    extras = re.search(r"ARG EXTRAS=(\S+)", dockerfile).group(1).split(",")
    assert set(extras) <= set(pyproject["project"]["optional-dependencies"])
    assert "psycopg2-binary>=2.9" in pyproject["project"]["optional-dependencies"]["server"]
    # The image is built from the repository root: everything it copies exists.
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for part in source.split():
            assert (REPO / part).exists(), part
    assert "USER llmpipe" in dockerfile
    gpu = compose("compose.gpu.yaml")["services"]["prefect-worker"]
    assert gpu["build"]["args"]["TORCH_VARIANT"] == "cuda"


def test_build_context_leaves_out_the_virtualenv_and_work():
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "work"} <= set(ignored)
    assert compose()["x-llmpipe"]["build"] == {
        "context": "..",
        "dockerfile": "docker/Dockerfile",
        "args": {"TORCH_VARIANT": "${TORCH_VARIANT:-cpu}"},
    }


def test_postgres_init_creates_both_databases_and_pg_trgm():
    sql = (DOCKER / "postgres-init.sql").read_text()
    assert "CREATE DATABASE prefect;" in sql and "CREATE DATABASE mlflow;" in sql
    assert "CREATE EXTENSION IF NOT EXISTS pg_trgm;" in sql
