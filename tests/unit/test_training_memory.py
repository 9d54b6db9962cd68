"""Training memory, pure: model states against the ZeRO paper's own figures, and the rules of each mode."""

from __future__ import annotations

import pytest

from kvscale.estimator.catalog import resolve_model
from kvscale.estimator.errors import EstimatorError
from kvscale.estimator.gpus import default_catalog
from kvscale.estimator.training import (
    ZERO3_PREFETCH,
    Offload,
    Rollout,
    Sharding,
    TrainingConfig,
    TrainMode,
    estimate_training,
)
from kvscale.estimator.training_params import layer_matrices

H100 = default_catalog().get("H100-80GB")
LLAMA_8B = resolve_model("meta-llama/Llama-3.1-8B-Instruct")


@pytest.mark.parametrize(("sharding", "bytes_per_param"), [
    # ZeRO paper (Rajbhandari et al. 2020), Figure 1 at N_d = 64 GPUs: 16, 2+2+12/64, 2+14/64, 16/64
    (Sharding.DDP, 16.0), (Sharding.ZERO1, 4.1875), (Sharding.ZERO2, 2.21875), (Sharding.ZERO3, 0.25)])
def test_model_states_per_parameter_are_the_zero_papers(sharding: Sharding, bytes_per_param: float) -> None:
    est = estimate_training(LLAMA_8B, H100, TrainingConfig(gpus=64, sharding=sharding))
    # ZeRO-3 also holds the layer it computes and what it prefetches, gathered in 16 bits
    layer = sum(m.params for m in layer_matrices(LLAMA_8B, 0))
    gathered = (layer + ZERO3_PREFETCH) * 2 if sharding is Sharding.ZERO3 else 0
    held = est.parameters + est.gradients + est.optimizer - gathered
    assert held / est.trainable_params == pytest.approx(bytes_per_param, rel=1e-6)


@pytest.mark.parametrize(("sharding", "offload"), [
    (Sharding.ZERO2, Offload.OPTIMIZER), (Sharding.ZERO3, Offload.PARAMS), (Sharding.FSDP, Offload.PARAMS)])
def test_an_optimizer_stepping_on_the_host_takes_the_gradients_there(sharding: Sharding, offload: Offload) -> None:
    # ZeRO-Offload moves each reduced gradient partition to host memory for the CPU optimizer; FSDP's
    # CPUOffload(offload_params=True) keeps parameters and gradients on the CPU
    on_gpu = estimate_training(LLAMA_8B, H100, TrainingConfig(gpus=8, sharding=sharding))
    est = estimate_training(LLAMA_8B, H100, TrainingConfig(gpus=8, sharding=sharding, offload=offload))
    assert on_gpu.gradients > 0 and on_gpu.optimizer > 0
    assert est.optimizer == 0 and est.gradients == 0 and est.total < on_gpu.total
    assert any(n.endswith("gradients too") for n in est.notes)
    # ZeRO-1 does not partition gradients: they stay whole on the GPU while the optimizer steps on the host
    zero1 = TrainingConfig(gpus=8, sharding=Sharding.ZERO1)
    kept = estimate_training(LLAMA_8B, H100, zero1)
    offloaded = estimate_training(LLAMA_8B, H100, zero1.model_copy(update={"offload": Offload.OPTIMIZER}))
    assert offloaded.optimizer == 0 and offloaded.gradients == kept.gradients > 0


def test_lora_trains_a_sliver_and_qlora_stores_the_base_in_about_four_bits() -> None:
    full = estimate_training(LLAMA_8B, H100, TrainingConfig())
    lora = estimate_training(LLAMA_8B, H100, TrainingConfig(mode=TrainMode.LORA, lora_rank=16))
    qlora = estimate_training(LLAMA_8B, H100, TrainingConfig(mode=TrainMode.QLORA, lora_rank=16))
    # r=16 on every linear of Llama-3.1-8B: 16 x (sum of in+out) x 32 layers = 41.9 M (PEFT reports 41,943,040)
    assert lora.trainable_params == 41_943_040
    # the frozen base in 16 bits, the adapters in fp32 (PEFT), their gradients and AdamW states in fp32
    assert lora.parameters == full.trainable_params * 2 + lora.trainable_params * 4
    assert (lora.gradients, lora.optimizer) == (lora.trainable_params * 4, lora.trainable_params * 8)
    assert qlora.parameters < lora.parameters * 0.4


def test_grpo_loads_a_reference_only_with_a_kl_term_and_a_colocated_vllm_takes_its_share() -> None:
    base = TrainingConfig(mode=TrainMode.GRPO, seq_len=1024)
    without = estimate_training(LLAMA_8B, H100, base)
    with_kl = estimate_training(LLAMA_8B, H100, base.model_copy(update={"kl_coef": 0.04}))
    assert without.frozen_models == 0 and with_kl.frozen_models == 2 * without.trainable_params  # a 16-bit copy
    colocated = estimate_training(LLAMA_8B, H100, base.model_copy(update={"rollout": Rollout.COLOCATED}))
    assert colocated.rollout_engine == pytest.approx(0.3 * H100.memory_bytes, rel=1e-6)
    assert colocated.total >= without.total


def test_impossible_combinations_are_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="offload params needs sharded weights"):
        TrainingConfig(offload=Offload.PARAMS)
    with pytest.raises(ValueError, match="not a multiple of tensor_parallel"):
        TrainingConfig(gpus=6, tensor_parallel=4)
    with pytest.raises(EstimatorError, match="match no linear layer"):
        estimate_training(LLAMA_8B, H100, TrainingConfig(mode=TrainMode.LORA, lora_targets=("nothing",)))


def test_ppo_trains_a_full_critic_even_when_the_policy_has_adapters() -> None:
    lora = estimate_training(LLAMA_8B, H100, TrainingConfig(mode=TrainMode.LORA, gpus=8, sharding=Sharding.ZERO3))
    ppo = estimate_training(LLAMA_8B, H100, TrainingConfig(mode=TrainMode.PPO, gpus=8, sharding=Sharding.ZERO3,
                                                           lora_rank=16))
    full = estimate_training(LLAMA_8B, H100, TrainingConfig(gpus=8, sharding=Sharding.ZERO3))
    # PPO with full actor: actor + critic states, and the reference and reward models frozen
    assert ppo.optimizer == pytest.approx(2 * full.optimizer, rel=1e-9)
    assert lora.optimizer < full.optimizer / 100


def test_a_colocated_vllm_that_does_not_sleep_holds_its_share_while_training() -> None:
    base = TrainingConfig(mode=TrainMode.GRPO, rollout=Rollout.COLOCATED, seq_len=1024)
    awake = estimate_training(LLAMA_8B, H100, base)
    asleep = estimate_training(LLAMA_8B, H100, base.model_copy(update={"rollout_sleep": True}))
    assert awake.total - asleep.total == pytest.approx(min(awake.rollout_engine, awake.activations + awake.gradients),
                                                       rel=1e-6)


def test_tensor_parallelism_splits_the_inner_dimensions_and_sequence_parallelism_the_rest() -> None:
    def acts(**kw: object) -> int:
        cfg = TrainingConfig(gpus=4, seq_len=4096, **kw)  # type: ignore[arg-type]
        return estimate_training(LLAMA_8B, H100, cfg).activations
    one, tp, tp_sp = acts(), acts(tensor_parallel=4), acts(tensor_parallel=4, sequence_parallel=True)
    assert one / 4 < tp < one  # norms, the residual stream and the column-parallel inputs are replicated
    assert tp_sp == pytest.approx(one / 4, rel=0.01)


@pytest.mark.parametrize(("update", "says"), [
    ({"offload": Offload.OPTIMIZER, "sharding": Sharding.FSDP}, "ZeRO-Offload"),
    ({"pipeline_parallel": 2, "gpus": 2, "sharding": Sharding.ZERO3}, "pipeline_parallel > 1"),
    ({"rollout": Rollout.COLOCATED}, "only PPO and GRPO generate"),
    ({"kl_coef": 0.1, "mode": TrainMode.DPO}, "kl_coef applies to GRPO only"),
])
def test_set_ups_no_framework_runs_are_refused(update: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        TrainingConfig(**update)  # type: ignore[arg-type]
