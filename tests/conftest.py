"""Test setup: quiet offline environment, a temporary PREFECT_HOME and one Prefect test server.

Slow tests (marked `slow`) run only with `--runslow`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="llmpipe-tests-"))
for key, value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_HOME": str(_HOME / "prefect"),
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HOME": str(_HOME / "hf"),
    "MPLCONFIGDIR": str(_HOME / "matplotlib"),
    "MPLBACKEND": "Agg",
    "XDG_CONFIG_HOME": str(_HOME / "config"),
    "TORCHINDUCTOR_CACHE_DIR": str(_HOME / "inductor"),
    # a Prefect server someone runs at 127.0.0.1:4200 is not the tests' (flows/stack.py)
    "LLMPIPE_REUSE_PREFECT_SERVER": "0",
}.items():
    os.environ[key] = value
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the whole session (it takes ~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def missing(what: str) -> None:
    """Skip a test whose servers or browser are absent; fail instead where CI requires them."""
    if os.environ.get("LLMPIPE_REQUIRE_SERVERS") == "1":
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope="session")
def server_stack():
    """PostgreSQL, the Prefect server and the MLflow server on 127.0.0.1 (flows/stack.py)."""
    from flows.stack import postgres_bin

    if postgres_bin() is None:
        missing("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    from server_helpers import start_stack, stop_stack

    stack = start_stack()
    yield stack
    stop_stack(stack)


@pytest.fixture(scope="session")
def served_run(server_stack, tmp_path_factory):
    """One shrunk quickstart run of prefect.yaml's deployment, run by a worker on the stack."""
    from server_helpers import run_deployment_on_stack
    from test_pipeline_e2e import SHRINK

    return run_deployment_on_stack(server_stack, SHRINK, tmp_path_factory.mktemp("served"))
