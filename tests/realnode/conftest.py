"""A cluster with real kubelet nodes (containerd, runc, CNI) beside a small kwok fleet."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvscale.testing.cluster import LocalCluster
from kvscale.testing.fleet import NodePool
from kvscale.testing.namespaces import namespace_for_test
from kvscale.testing.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
#: two real nodes of two fake L4 GPUs each; one kwok H100 node shows that both kinds mix in one cluster
REAL_NODES = 2
KWOK_FLEET = (NodePool(gpu="H100-80GB", nodes=1, gpus_per_node=8),)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[LocalCluster]:
    # a SIGTERM (a CI time limit, a parent's kill) unwinds the session like Ctrl-C, so teardown runs
    signal.signal(signal.SIGTERM, _interrupt)
    c = LocalCluster(fleet=KWOK_FLEET, real_nodes=REAL_NODES)
    c.start(timeout=300)
    try:
        c.install_crd((REPO / "crds" / "kvscale.io_llmdeployments.yaml").read_text())
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def real_api(real_cluster: LocalCluster) -> Iterator[Any]:
    from kubernetes import config

    client = config.new_client_from_config(str(real_cluster.kubeconfig))
    yield client
    client.close()


@pytest.fixture
def real_namespace(real_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    with namespace_for_test(real_api, request.node.name, "r") as name:
        yield name


@pytest.fixture
def real_operator(real_cluster: LocalCluster, real_namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator as a process on this machine, watching only the test's namespace."""
    op = OperatorProcess(kubeconfig=real_cluster.kubeconfig, log_path=tmp_path / "operator.log",
                         extra_env={"KVSCALE_AUTOSCALE_INTERVAL": "3", "KVSCALE_NAMESPACES": real_namespace,
                                    "KVSCALE_READ_POD_LOGS": "1"})
    op.start()
    try:
        yield op
    finally:
        op.stop()
