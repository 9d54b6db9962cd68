"""Helm chart, kustomize base and generated files, with the real helm and kubectl binaries."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kvscale.testing.cluster import LocalCluster
from kvscale.testing.fleet import NodePool
from kvscale.testing.operator_process import OperatorProcess
from kvscale.testing.waiting import wait_for

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kvscale"
NS = "kvscale-system"


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A separate control plane: the chart's operator must be the only one reconciling here."""
    c = LocalCluster(fleet=(NodePool(gpu="L4", nodes=2, gpus_per_node=1),),
                     workdir=tmp_path_factory.mktemp("helm-cluster"))
    c.start()
    try:
        yield c
    finally:
        c.stop()


def helm(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert cluster.binaries is not None
    return subprocess.run([cluster.binaries.path("helm"), f"--kubeconfig={cluster.kubeconfig}", *args],
                          capture_output=True, text=True, check=check)


def test_chart_crd_is_the_generated_crd(own_cluster: LocalCluster) -> None:
    assert (CHART / "files" / "kvscale.io_llmdeployments.yaml").read_text() == \
        (REPO / "crds" / "kvscale.io_llmdeployments.yaml").read_text()
    docs = list(yaml.safe_load_all(helm(own_cluster, "template", "kvscale", str(CHART), "-n", NS).stdout))
    crd = next(d for d in docs if d and d["kind"] == "CustomResourceDefinition")
    assert crd["spec"] == yaml.safe_load((REPO / "crds" / "kvscale.io_llmdeployments.yaml").read_text())["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    off = helm(own_cluster, "template", "kvscale", str(CHART), "-n", NS, "--set", "crds.install=false").stdout
    assert "CustomResourceDefinition" not in off


def test_helm_upgrade_upgrades_the_crd(tmp_path: Path) -> None:
    """An upgrade that adds a field: before it the field is refused, after it the field is stored."""
    c = LocalCluster(fleet=(NodePool(gpu="L4", nodes=1, gpus_per_node=1),), workdir=tmp_path / "cluster")
    c.start()
    try:
        old = tmp_path / "old-chart"
        shutil.copytree(CHART, old)
        crd_file = old / "files" / "kvscale.io_llmdeployments.yaml"
        crd = yaml.safe_load(crd_file.read_text())
        placement = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
            "placement"]["properties"]
        del placement["priorityClassName"]  # the field this upgrade adds
        crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
        assert "STATUS: deployed" in helm(c, "install", "kvscale", str(old), "-n", NS, "--create-namespace").stdout
        c.kubectl("wait", "--for=condition=Established", "crd/llmdeployments.kvscale.io", "--timeout=60s")
        c.kubectl("create", "namespace", "apps")
        with_field = LLMD.replace("placement: {gpuTypes: [L4]}", "placement: {gpuTypes: [L4], priorityClassName: hi}")

        def stored() -> str:
            return c.kubectl("get", "llmd", "small", "-n", "apps", "-o",
                             "jsonpath={.spec.placement.priorityClassName}").stdout

        before = c.kubectl("apply", "-f", "-", input=with_field, check=False)
        assert before.returncode != 0 and 'unknown field "spec.placement.priorityClassName"' in before.stderr
        assert "STATUS: deployed" in helm(c, "upgrade", "kvscale", str(CHART), "-n", NS).stdout
        wait_for(lambda: c.kubectl("apply", "-f", "-", input=with_field, check=False).returncode == 0 and stored(),
                 30, "the upgraded CRD to store the new field")
        assert stored() == "hi"
        helm(c, "uninstall", "kvscale", "-n", NS)
        assert c.kubectl("get", "llmd", "small", "-n", "apps").returncode == 0, "uninstall kept the CRD and objects"
    finally:
        c.stop()


def test_kustomize_base_is_the_rendered_chart(own_cluster: LocalCluster) -> None:
    rendered = helm(own_cluster, "template", "kvscale", str(CHART), "-n", NS, "--set", "crds.install=false").stdout
    assert rendered == (REPO / "deploy" / "base" / "kvscale.yaml").read_text(), "run `make deploy-manifests`"


@pytest.mark.parametrize("values", [
    [], ["--set", "replicaCount=2"],
    ["--set-json", 'gpuCatalog.prices={"L4":0.5}', "--set", "serviceMonitor.enabled=true"]])
def test_helm_lint(own_cluster: LocalCluster, values: list[str]) -> None:
    out = helm(own_cluster, "lint", str(CHART), *values)
    assert "0 chart(s) failed" in out.stdout


def test_values_schema_rejects_bad_values(own_cluster: LocalCluster) -> None:
    out = helm(own_cluster, "template", "kvscale", str(CHART), "--set", "logFormat=xml", check=False)
    assert out.returncode != 0 and "logFormat" in out.stderr


def test_rendered_pod_is_restricted(own_cluster: LocalCluster) -> None:
    docs = list(yaml.safe_load_all(helm(own_cluster, "template", "kvscale", str(CHART), "-n", NS).stdout))
    dep = next(d for d in docs if d and d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    sc = pod["containers"][0]["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert pod["containers"][0]["resources"]["limits"]


def test_helm_template_applies_server_side(own_cluster: LocalCluster) -> None:
    own_cluster.kubectl("create", "namespace", "render-check")
    rendered = helm(own_cluster, "template", "render", str(CHART), "-n", "render-check", "--include-crds").stdout
    out = own_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert "deployment.apps/render created (server dry run)" in out.stdout


def _sa_kubeconfig(cluster: LocalCluster, path: Path) -> Path:
    token = cluster.kubectl("create", "token", "kvscale", "-n", NS, "--duration=2h").stdout.strip()
    cfg = yaml.safe_load(cluster.kubeconfig.read_text())
    cfg["users"] = [{"name": "user", "user": {"token": token}}]
    path.write_text(yaml.safe_dump(cfg))
    return path


LLMD = """
apiVersion: kvscale.io/v1alpha1
kind: LLMDeployment
metadata: {name: small, namespace: apps}
spec:
  model: {name: Qwen/Qwen2.5-7B-Instruct}
  serving: {maxModelLen: 8192, targetConcurrency: 1}
  placement: {gpuTypes: [L4]}
  autoscaling: {minReplicas: 1, maxReplicas: 2}
"""


def test_install_reconcile_upgrade_uninstall(own_cluster: LocalCluster, tmp_path: Path) -> None:
    out = helm(own_cluster, "install", "kvscale", str(CHART), "-n", NS, "--create-namespace", "--wait=false",
               "--set-json", 'gpuCatalog.prices={"L4":0.42}')
    assert "STATUS: deployed" in out.stdout
    # the operator runs here as a process, but with the chart's ServiceAccount: RBAC decides what it may do
    op = OperatorProcess(kubeconfig=_sa_kubeconfig(own_cluster, tmp_path / "sa.kubeconfig"),
                         log_path=tmp_path / "operator.log",
                         extra_env={"KVSCALE_AUTOSCALE_INTERVAL": "2", "KVSCALE_LEADER_ELECTION": "kvscale",
                                    "KVSCALE_LEASE_NAMESPACE": NS}).start()
    try:
        own_cluster.kubectl("create", "namespace", "apps")
        own_cluster.kubectl("apply", "-f", "-", input=LLMD)
        wait_for(lambda: own_cluster.kubectl("get", "deploy", "small", "-n", "apps", check=False).returncode == 0,
              60, "vLLM Deployment applied under the chart's RBAC")
        wait_for(lambda: "MetricsAvailable" in own_cluster.kubectl(
            "get", "llmd", "small", "-n", "apps", "-o", "jsonpath={.status.conditions[*].type}").stdout,
            60, "autoscaler ran (pods listed, status patched)")
        events = own_cluster.kubectl("get", "events", "-n", "apps", "-o", "jsonpath={.items[*].reason}").stdout
        assert "Planned" in events
        holder = own_cluster.kubectl("get", "lease", "kvscale", "-n", NS, "-o", "jsonpath={.spec.holderIdentity}")
        assert holder.stdout.startswith("kvscale@"), "the Lease the chart's Role allows is held"
        time.sleep(3)
    finally:
        op.stop()
    log = (tmp_path / "operator.log").read_text()
    assert "Forbidden" not in log and " 403" not in log, log[-3000:]

    out = helm(own_cluster, "upgrade", "kvscale", str(CHART), "-n", NS, "--set", "logFormat=plain",
               "--set", "replicaCount=2")
    assert "STATUS: deployed" in out.stdout
    env = own_cluster.kubectl("get", "deploy", "kvscale", "-n", NS, "-o",
                              "jsonpath={.spec.template.spec.containers[0].env}").stdout
    assert '"plain"' in env and "KVSCALE_LEADER_ELECTION" in env
    assert own_cluster.kubectl("get", "role,rolebinding", "kvscale-leader-election", "-n", NS).returncode == 0

    helm(own_cluster, "uninstall", "kvscale", "-n", NS)
    left = own_cluster.kubectl("get", "deploy,svc,sa,cm,clusterrole,clusterrolebinding,role,rolebinding", "-A",
                               "-l", "app.kubernetes.io/instance=kvscale", "-o", "name").stdout.strip()
    assert left == "", f"left behind after uninstall: {left}"
    # Helm never deletes CRDs (that would delete every LLMDeployment); they stay, by design
    assert own_cluster.kubectl("get", "crd", "llmdeployments.kvscale.io").returncode == 0


def test_kubectl_apply_k_deploy(own_cluster: LocalCluster) -> None:
    out = own_cluster.kubectl("apply", "-k", str(REPO / "deploy"))
    assert "deployment.apps/kvscale" in out.stdout
    assert "customresourcedefinition.apiextensions.k8s.io/llmdeployments.kvscale.io" in out.stdout
    dep = own_cluster.kubectl("get", "deploy", "kvscale", "-n", NS, "-o", "jsonpath={.spec.template.spec"
                              ".serviceAccountName}").stdout
    assert dep == "kvscale"
    own_cluster.kubectl("delete", "-k", str(REPO / "deploy"), "--wait=true", "--timeout=120s")


def test_examples_are_valid(own_cluster: LocalCluster) -> None:
    own_cluster.install_crd((REPO / "crds" / "kvscale.io_llmdeployments.yaml").read_text())
    own_cluster.kubectl("create", "namespace", "examples", check=False)
    for example in sorted((REPO / "deploy" / "examples").glob("*.yaml")):
        def dry_run(path: Path = example) -> subprocess.CompletedProcess[str] | None:
            out = own_cluster.kubectl("apply", "--dry-run=server", "-n", "examples", "-f", str(path), check=False)
            if out.returncode != 0 and "could not find the requested resource" in out.stderr:
                return None  # the re-created CRD is not served yet
            return out

        out = wait_for(dry_run, 60, f"{example.name} accepted or rejected")
        assert out.returncode == 0, f"{example.name}: {out.stderr}"
