"""Shared fixtures: the real local control plane (session-scoped) and API clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvscale.testing.cluster import LocalCluster


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
    from kubernetes import client

    core = client.CoreV1Api(api)
    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)
