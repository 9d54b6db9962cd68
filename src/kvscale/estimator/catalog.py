"""Built-in model catalog (published config.json files shipped in the package) and model lookup.

A MODEL argument is a catalog id or alias, a path to a config.json (or a directory holding
one), or — with network access and the ``hub`` extra — any Hugging Face id.
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .errors import InvalidConfig, UnknownModel
from .model_spec import ModelSpec, from_hf_config


class CatalogEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    aliases: tuple[str, ...] = ()
    published_params_b: float | None = None
    params_source: str | None = None
    config: dict[str, Any]
    hf_quant_config: dict[str, Any] | None = None  # ModelOpt checkpoints keep it beside config.json


@cache
def catalog() -> dict[str, CatalogEntry]:
    """Catalog entries keyed by lower-cased id and alias."""
    out: dict[str, CatalogEntry] = {}
    folder = resources.files("kvscale.estimator").joinpath("catalog/models")
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if not item.name.endswith(".json"):
            continue
        entry = CatalogEntry.model_validate(json.loads(item.read_text()))
        for key in (entry.id, *entry.aliases):
            out[key.lower()] = entry
    return out


def catalog_ids() -> list[str]:
    return sorted({e.id for e in catalog().values()})


def _load_path(path: Path) -> ModelSpec:
    cfg_path = path / "config.json" if path.is_dir() else path
    if not cfg_path.is_file():
        raise InvalidConfig(f"{path}: no config.json there")
    try:
        data = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidConfig(f"{cfg_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    name = cfg_path.parent.name if cfg_path.name == "config.json" else cfg_path.stem
    return from_hf_config(data, name=name)


def _fetch_from_hub(model_id: str) -> dict[str, Any] | None:
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("KVSCALE_OFFLINE"):
        return None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    try:
        path = hf_hub_download(model_id, "config.json")
    except Exception:  # network, auth or missing repo: all mean "not available here"
        return None
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def resolve_model(model: str, overrides: dict[str, Any] | None = None) -> ModelSpec:
    """ModelSpec for a catalog id, a config path, or (online) a Hub id."""
    if not model or not model.strip():
        raise InvalidConfig("model must not be empty")
    entry = catalog().get(model.strip().lower())
    if entry is not None:
        cfg = dict(entry.config)
        if entry.hf_quant_config and "quantization_config" not in cfg:
            quant = entry.hf_quant_config.get("quantization", entry.hf_quant_config)
            cfg["quantization_config"] = {"quant_method": "modelopt", **quant}
        if overrides:
            cfg.update(overrides)
        return from_hf_config(cfg, name=entry.id)
    path = Path(model).expanduser()
    if path.exists() or model.endswith(".json"):
        spec = _load_path(path)
        if overrides:
            return from_hf_config({**json.loads((path / "config.json" if path.is_dir() else path).read_text()),
                                   **overrides}, name=spec.name)
        return spec
    if overrides and "num_hidden_layers" in overrides:  # a full architecture was given inline
        return from_hf_config(overrides, name=model)
    if "/" in model:
        fetched = _fetch_from_hub(model)
        if fetched is not None:
            return from_hf_config({**fetched, **(overrides or {})}, name=model)
        raise UnknownModel(model, "offline or not on the Hub")
    raise UnknownModel(model)
