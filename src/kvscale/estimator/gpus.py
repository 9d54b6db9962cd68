"""GPU catalog: memory as the runtime reports it, bandwidth, compute, node labels, price."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .errors import EstimatorError, UnknownGPU

GIB = 1 << 30


class GPUType(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    memory_gib: float = Field(gt=0)
    bandwidth_gbps: float = Field(gt=0)
    bf16_tflops: float = Field(gt=0)
    # what measurements reach (stream kernels, large GEMMs); None: the catalog's typical share of the peak
    achieved_bandwidth_gbps: float | None = Field(default=None, gt=0)
    achieved_bf16_tflops: float | None = Field(default=None, gt=0)
    achieved_fp8_tflops: float | None = Field(default=None, gt=0)
    fp8: bool = False
    # the link between GPUs of one node (tensor parallelism's all-reduces run over it), GB/s per GPU
    link: str = "pcie"
    link_gbps: float = Field(default=64.0, gt=0)
    vendor: str = "nvidia"
    resource_name: str = "nvidia.com/gpu"
    product_label_key: str = "nvidia.com/gpu.product"
    product_labels: tuple[str, ...] = ()
    price_per_hour: float = Field(ge=0)
    # seconds from a scale-up to a serving replica on nodes of this type (image pull, weight load,
    # vLLM start-up): what the simulator charges a new replica unless told otherwise
    cold_start_s: float = Field(default=90.0, ge=0)

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)


#: vLLM's release images per GPU vendor ({version} is the release the estimator models): the CUDA image
#: on Docker Hub and the ROCm one vLLM's release pipeline publishes beside it
DEFAULT_IMAGES = {"nvidia": "vllm/vllm-openai:v{version}", "amd": "vllm/vllm-openai-rocm:v{version}"}


class GPUCatalog(BaseModel):
    model_config = ConfigDict(frozen=True)
    gpus: tuple[GPUType, ...]
    images: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_IMAGES))

    def image(self, gpu: GPUType, version: str) -> str:
        """The vLLM image for this GPU's vendor at ``version``."""
        template = self.images.get(gpu.vendor)
        if template is None:
            raise EstimatorError(f"GPU catalog: no vLLM image for vendor {gpu.vendor!r} of {gpu.name} "
                                 f"(images are given for: {', '.join(sorted(self.images))})")
        return template.format(version=version)

    def names(self) -> list[str]:
        return [g.name for g in self.gpus]

    @property
    def resource_names(self) -> frozenset[str]:
        """The extended resources pods request these GPUs by (nvidia.com/gpu, amd.com/gpu, ...)."""
        return frozenset(g.resource_name for g in self.gpus)

    def get(self, name: str) -> GPUType:
        key = name.strip().lower()
        for g in self.gpus:
            if g.name.lower() == key or key in (lbl.lower() for lbl in g.product_labels):
                return g
        raise UnknownGPU(name, self.names())

    def by_product_label(self, label: str) -> GPUType | None:
        for g in self.gpus:
            if label in g.product_labels:
                return g
        return None

    def with_prices(self, prices: dict[str, float]) -> GPUCatalog:
        updated = [g.model_copy(update={"price_per_hour": prices[g.name]}) if g.name in prices else g
                   for g in self.gpus]
        return GPUCatalog(gpus=tuple(updated), images=self.images)


def parse_catalog(text: str, source: str = "GPU catalog") -> GPUCatalog:
    try:
        data = yaml.safe_load(text)
        return GPUCatalog.model_validate(data)
    except (yaml.YAMLError, ValueError) as exc:
        raise EstimatorError(f"{source} is invalid: {exc}") from None


@cache
def default_catalog() -> GPUCatalog:
    text = resources.files("kvscale.estimator").joinpath("catalog/gpus.yaml").read_text()
    return parse_catalog(text, "built-in GPU catalog")


def load_catalog(path: str | Path | None) -> GPUCatalog:
    if path is None:
        return default_catalog()
    p = Path(path)
    if not p.is_file():
        raise EstimatorError(f"--gpu-catalog {path}: no such file")
    return parse_catalog(p.read_text(), str(p))


def load_prices(path: str | Path) -> dict[str, float]:
    """GPU name -> price per hour, from a YAML mapping (the chart's gpuCatalog.prices)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EstimatorError(f"GPU prices {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, int | float) and v >= 0 for v in data.values()):
        raise EstimatorError(f"GPU prices {path}: must map GPU names to non-negative numbers")
    known = default_catalog().names()
    unknown = [k for k in data if k not in known]
    if unknown:
        raise EstimatorError(f"GPU prices {path}: unknown GPU type(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return {str(k): float(v) for k, v in data.items()}


def custom_gpu(memory_gib: float) -> GPUType:
    """A card outside the catalog, known only by the memory vLLM sees."""
    if memory_gib <= 0:
        raise EstimatorError(f"--gpu-memory-gib must be positive, got {memory_gib}")
    return GPUType(name=f"custom-{memory_gib:g}GiB", memory_gib=memory_gib, bandwidth_gbps=1000,
                   bf16_tflops=100, fp8=True, price_per_hour=0.0)
