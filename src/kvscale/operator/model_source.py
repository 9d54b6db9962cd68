"""Where a replica's weights come from -> the volumes, mounts, env and flags that load them (pure).

A Hugging Face id is downloaded by vLLM into the Hugging Face cache: a shared cache volume makes
every restart and every new replica read it instead of downloading again. ``pvc://claim/path``
mounts that claim read-only; ``s3://`` and ``gs://`` are streamed into GPU memory by vLLM's Run:ai
model streamer, with no copy on disk. A plain path is read as it is (from the image or a volume
given in ``spec.vllm.volumes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .resource import CacheAccessMode, LLMDeploymentSpec

CACHE_MOUNT = "/models-cache"  # HF_HOME of the replicas when a cache volume is mounted
#: vLLM's own cache (torch.compile artifacts) on a writable cache volume: a restart or a new replica of the
#: same engine arguments loads the compiled graphs instead of compiling again (vLLM's torch.compile design
#: notes: the cache directory may be copied between deployments; the artifacts are written atomically
#: since torch 2.10, so replicas starting together may share it)
COMPILE_CACHE = f"{CACHE_MOUNT}/vllm"
PVC_MOUNT = "/mnt/models"  # where pvc:// claims are mounted (one directory per claim)
STREAMER_LOAD_FORMAT = "runai_streamer"


class Origin(StrEnum):
    DOWNLOAD = "download"  # from the Hugging Face Hub on every start
    CACHE = "cache"  # from the Hub once, then from the shared cache volume
    VOLUME = "volume"  # a path on a volume or in the image: read, nothing fetched
    STREAM = "stream"  # object storage through the Run:ai streamer


@dataclass(frozen=True)
class ModelSource:
    model_arg: str  # what vLLM's --model gets
    origin: Origin
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)
    env_from: list[dict[str, Any]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    cache_claim: str | None = None  # the claim kvscale creates, if any

    @property
    def writes_to_container(self) -> bool:
        """Weights land on the container's own filesystem (ephemeral storage)."""
        return self.origin is Origin.DOWNLOAD


def cache_claim_name(name: str) -> str:
    return f"{name}-model-cache"


def model_source(name: str, spec: LLMDeploymentSpec) -> ModelSource:
    m = spec.model
    uri = m.uri or m.name
    env: list[dict[str, Any]] = []
    if m.hf_token_secret:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": m.hf_token_secret.name, "key": m.hf_token_secret.key}}})
    env_from = [{"secretRef": {"name": m.credentials_secret}}] if m.credentials_secret else []

    if uri.startswith(("s3://", "gs://")):
        return ModelSource(uri, Origin.STREAM, env=env, env_from=env_from,
                           flags=["--load-format", STREAMER_LOAD_FORMAT])
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        vol = f"model-{claim}"[:63]
        return ModelSource(
            f"{PVC_MOUNT}/{claim}/{path}".rstrip("/"), Origin.VOLUME, env=env, env_from=env_from,
            volumes=[{"name": vol, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
            mounts=[{"name": vol, "mountPath": f"{PVC_MOUNT}/{claim}", "readOnly": True}])
    if uri.startswith("/"):
        return ModelSource(uri, Origin.VOLUME, env=env, env_from=env_from)
    if m.cache is None:
        return ModelSource(uri, Origin.DOWNLOAD, env=env, env_from=env_from)
    claim = m.cache.claim_name or cache_claim_name(name)
    read_only = m.cache.access_mode is CacheAccessMode.READ_ONLY_MANY
    env = [*env, {"name": "HF_HOME", "value": CACHE_MOUNT}]
    if read_only:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})  # filled already: never reach for the Hub
    else:
        env.append({"name": "VLLM_CACHE_ROOT", "value": COMPILE_CACHE})
    return ModelSource(
        uri, Origin.CACHE, env=env, env_from=env_from,
        volumes=[{"name": "model-cache", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}],
        mounts=[{"name": "model-cache", "mountPath": CACHE_MOUNT, "readOnly": read_only}],
        cache_claim=claim if m.cache.create else None)


def uri_error(uri: str | None) -> str | None:
    """What is wrong with a model URI, or None."""
    if not uri:
        return None
    if uri.startswith("pvc://"):
        claim, _, _path = uri.removeprefix("pvc://").partition("/")
        if not claim:
            return f"spec.model.uri {uri!r}: pvc:// needs a claim name (pvc://<claim>/<path>)"
    elif "://" in uri and not uri.startswith(("s3://", "gs://")):
        scheme = uri.split("://", 1)[0]
        return (f"spec.model.uri {uri!r}: scheme {scheme}:// is not supported "
                "(use a Hugging Face id, a path, pvc://, s3:// or gs://)")
    return None
