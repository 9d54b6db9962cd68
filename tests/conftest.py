"""Shared fixtures: the real local control plane (session-scoped) and API clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvscale.testing.cluster import LocalCluster
from kvscale.testing.namespaces import namespace_for_test


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster()
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def api(cluster: LocalCluster):  # type: ignore[no-untyped-def]
    from kubernetes import config

    client = config.new_client_from_config(str(cluster.kubeconfig))
    yield client
    client.close()


@pytest.fixture
def namespace(api, request: pytest.FixtureRequest) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with namespace_for_test(api, request.node.name, "t") as name:
        yield name


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def crd_installed(cluster: LocalCluster) -> None:
    cluster.install_crd((REPO / "crds" / "kvscale.io_llmdeployments.yaml").read_text())


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, crd_installed: None, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from kvscale.testing.operator_process import OperatorProcess

    op = OperatorProcess(kubeconfig=cluster.kubeconfig,
                         log_path=tmp_path_factory.mktemp("operator") / "operator.log",
                         extra_env={"KVSCALE_AUTOSCALE_INTERVAL": "3",
                                    # in the operator's namespace ("default" outside a pod)
                                    "KVSCALE_CALIBRATION_CONFIGMAP": "kvscale-calibration",
                                    # the tests' Prometheus servers listen on loopback, at any port
                                    "KVSCALE_PROMETHEUS_URLS": "http://127.0.0.1"})
    op.start()
    try:
        yield op
    finally:
        op.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Timing-sensitive comparisons of real vLLM with the simulator run first, before the shared control
    plane and operator exist (on 2 cores their background work shows up in vLLM's step times); the chaos
    suite runs last, as it leaves that control plane busy for a while (hundreds of objects being collected,
    an operator catching up)."""
    def rank(item: pytest.Item) -> int:
        if item.path.name == "test_sim_vs_vllm.py":
            return 0
        return 2 if item.path.parent.name == "chaos" else 1

    items.sort(key=rank)
