import pytest

from kvscale.estimator.catalog import catalog, catalog_ids, resolve_model
from kvscale.estimator.params import count_params

PUBLISHED = [(mid, catalog()[mid.lower()].published_params_b) for mid in catalog_ids()
             if catalog()[mid.lower()].published_params_b]


@pytest.mark.parametrize(("model", "published_b"), PUBLISHED)
def test_parameter_count_matches_published(model: str, published_b: float) -> None:
    total = count_params(resolve_model(model)).total / 1e9
    assert total == pytest.approx(published_b, rel=0.02), f"{model}: {total:.2f}B vs {published_b}B"


def test_moe_active_parameters() -> None:
    spec = resolve_model("Qwen/Qwen3-30B-A3B")
    p = count_params(spec)
    assert p.active(spec) / 1e9 == pytest.approx(3.3, rel=0.1)
    assert p.total / 1e9 == pytest.approx(30.5, rel=0.02)


def test_deepseek_v3_active_37b() -> None:
    spec = resolve_model("deepseek-ai/DeepSeek-V3")
    assert count_params(spec).active(spec) / 1e9 == pytest.approx(37, rel=0.03)
