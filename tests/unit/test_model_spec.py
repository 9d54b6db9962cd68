import multiprocessing as mp
import resource
from multiprocessing.connection import Connection

import pytest

from kvscale.estimator.catalog import catalog, catalog_ids, resolve_model
from kvscale.estimator.errors import InvalidConfig, UnknownModel
from kvscale.estimator.model_spec import FFN, Mixer, from_hf_config

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
         "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
         "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 131072}


def test_every_catalog_entry_parses() -> None:
    ids = catalog_ids()
    assert len(ids) >= 45
    for mid in ids:
        spec = resolve_model(mid)
        assert spec.num_layers == len(spec.mixers) == len(spec.ffns)
        assert spec.head_dim > 0 and spec.vocab_size > 0


def test_lookup_is_case_insensitive_and_knows_aliases() -> None:
    assert resolve_model("META-LLAMA/llama-3.1-8b-instruct").name == "meta-llama/Llama-3.1-8B-Instruct"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("google/gemma-2-9b-it", [Mixer.SLIDING, Mixer.FULL] * 21),
        ("google/gemma-3-1b-it", ([Mixer.SLIDING] * 5 + [Mixer.FULL]) * 4 + [Mixer.SLIDING] * 2),
        ("Qwen/Qwen3-Next-80B-A3B-Instruct", ([Mixer.LINEAR] * 3 + [Mixer.FULL]) * 12),
    ],
)
def test_layer_layouts(model: str, expected: list[Mixer]) -> None:
    assert list(resolve_model(model).mixers) == expected


def test_gpt_oss_alternates_sliding_and_full_from_layer_types() -> None:
    spec = resolve_model("openai/gpt-oss-20b")
    assert spec.sliding_window == 128
    assert spec.mixers.count(Mixer.SLIDING) == spec.mixers.count(Mixer.FULL) == 12
    assert spec.quantization is not None and spec.quantization.method == "mxfp4"


def test_deepseek_v3_is_mla_with_dense_first_layers() -> None:
    spec = resolve_model("deepseek-ai/DeepSeek-V3")
    assert set(spec.mixers) == {Mixer.MLA}
    assert spec.ffns[:3] == (FFN.DENSE,) * 3 and set(spec.ffns[3:]) == {FFN.MOE}
    assert spec.mla is not None and spec.mla.kv_lora_rank == 512
    assert spec.quantization is not None and spec.quantization.method == "fp8"


def test_nemotron_h_pattern_has_mamba_attention_and_mlp_only_layers() -> None:
    spec = resolve_model("nvidia/Nemotron-H-8B-Base-8K")
    assert {Mixer.MAMBA, Mixer.FULL, Mixer.NONE} == set(spec.mixers)
    assert spec.is_hybrid and spec.mamba is not None


def test_awq_checkpoint_quantization_is_read() -> None:
    q = resolve_model("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4").quantization
    assert q is not None and (q.method, q.bits, q.group_size) == ("awq", 4, 128)


def test_modelopt_fp8_checkpoint_is_fp8() -> None:
    q = resolve_model("nvidia/Llama-3.1-70B-Instruct-FP8").quantization
    assert q is not None and q.method == "fp8"


def test_nested_text_config() -> None:
    spec = from_hf_config({"architectures": ["X"], "model_type": "wrapper", "text_config": dict(LLAMA)})
    assert spec.num_layers == 32 and spec.num_kv_heads == 8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_hidden_layers": None}, "num_hidden_layers"),
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"num_key_value_heads": 5}, "num_key_value_heads 5"),
        ({"layer_types": ["full_attention"] * 31 + ["weird"]}, "weird"),
        ({"vocab_size": "many"}, "vocab_size"),
    ],
)
def test_bad_configs_name_the_field(change: dict[str, object], message: str) -> None:
    cfg = {**LLAMA, **change}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with pytest.raises(InvalidConfig, match=message):
        from_hf_config(cfg)


def test_config_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    assert resolve_model(str(tmp_path)).num_layers == 32
    assert resolve_model(str(tmp_path / "config.json")).hidden_size == 4096


def test_unknown_model_offline_names_id_and_remedy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModel, match=r"'acme/secret-7b'.*config\.json"):
        resolve_model("acme/secret-7b")


def _plan_message_capped(architecture: dict[str, object], conn: Connection) -> None:
    """In a child whose address space is capped: a spec must be refused, not exhaust the host."""
    resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
    from kvscale.estimator.gpus import default_catalog
    from kvscale.operator.planning import decide_plan
    from kvscale.operator.resource import LLMDeploymentSpec

    spec = LLMDeploymentSpec.model_validate({"model": {"name": "meta-llama/Llama-3.1-8B-Instruct",
                                                       "architecture": architecture},
                                             "serving": {"maxModelLen": 4096}})
    try:
        out = decide_plan(spec, {}, default_catalog())
        conn.send((out.reason, out.message))
    except MemoryError:
        conn.send(("MemoryError", ""))


def test_an_absurd_layer_count_is_refused_naming_the_field_before_anything_is_built() -> None:
    # a billion layers reached the operator through spec.model.architecture and grew it to 24 GB
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_plan_message_capped,
                                           args=({"model_type": "llama", "num_hidden_layers": 10**9}, child))
    proc.start()
    proc.join(60)
    assert parent.poll(), f"the child ended without an answer (exit code {proc.exitcode})"
    reason, message = parent.recv()
    assert reason == "ModelUnknown", (reason, message)
    assert message.startswith("spec.model.architecture:") and "num_hidden_layers" in message
    assert "1000000000" in message and "1024" in message


def test_the_deepest_published_models_are_within_the_layer_limit() -> None:
    deepest = max(resolve_model(m).num_layers for m in catalog_ids())
    assert deepest <= 1024
    with pytest.raises(InvalidConfig, match=r"num_hidden_layers.*1025.*at most 1024"):
        from_hf_config({"model_type": "llama", "num_hidden_layers": 1025, "hidden_size": 64,
                        "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100})


@pytest.mark.parametrize(("field", "value"), [
    ("attn_layer_period", 0), ("expert_layer_period", 0), ("full_attention_interval", 0),
    ("moe_layer_freq", 0), ("attn_layer_period", "2"), ("first_k_dense_replace", -1)])
def test_a_layer_period_that_would_divide_by_zero_or_is_not_a_number_is_refused_by_name(field: str,
                                                                                        value: object) -> None:
    """These fields are divided by or compared with: 0 raised ZeroDivisionError, which no caller catches."""
    base = {"Jamba": "ai21labs/AI21-Jamba-1.5-Mini", "Next": "Qwen/Qwen3-Next-80B-A3B-Instruct",
            "DeepSeek": "deepseek-ai/DeepSeek-V3"}
    model = base["Next"] if field == "full_attention_interval" else \
        base["DeepSeek"] if field in ("moe_layer_freq", "first_k_dense_replace") else base["Jamba"]
    cfg = {**catalog()[model.lower()].config, field: value}
    cfg.pop("layer_types", None)  # so that the period, not an explicit list, lays the layers out
    with pytest.raises(InvalidConfig, match=field):
        from_hf_config(cfg)
