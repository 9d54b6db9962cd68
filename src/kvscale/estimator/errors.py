"""Typed domain errors. Each message names the field and, where memory is involved, the numbers."""

from __future__ import annotations


class EstimatorError(ValueError):
    """Bad input to the estimator or planner: a one-line message fit for a CLI or a condition."""


class UnknownModel(EstimatorError):
    def __init__(self, model: str, hint: str = "") -> None:
        self.model = model
        super().__init__(
            f"model {model!r} is not in kvscale's catalog"
            + (f" ({hint})" if hint else "")
            + "; pass a path to its config.json instead, or run with network access to fetch it from the Hub"
        )


class UnknownGPU(EstimatorError):
    def __init__(self, gpu: str, known: list[str]) -> None:
        self.gpu = gpu
        super().__init__(f"gpu {gpu!r} is not in the GPU catalog (known: {', '.join(known)}); "
                         "use --gpu-memory-gib for another card")


class InvalidConfig(EstimatorError):
    """A model config.json that cannot describe a servable transformer."""


class InvalidParallelism(EstimatorError):
    """A tensor/pipeline parallel degree the architecture cannot be split by."""


class UnsupportedQuantization(EstimatorError):
    pass


class InsufficientGPUMemory(EstimatorError):
    """The weights and fixed overheads leave too little room for the requested KV cache."""

    def __init__(self, message: str, needed_bytes: int, available_bytes: int) -> None:
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        super().__init__(message)
