"""Count what one real training step holds, by tensor: run with a Python that has torch, transformers and
peft (the vLLM CPU environment plus ``train_deps``), not kvscale's own.

    python train_probe.py '{"config": {...HF config...}, "batch": 2, "seq": 64, ...}'

prints one JSON object: parameter, gradient and optimizer-state bytes read from the tensors, and the
peak of the bytes autograd holds for backward (saved-tensor hooks: every tensor an op saved, counted once
per storage, parameters left out, released when autograd drops it), over the forward pass, the loss and
the backward pass (where recomputation under activation checkpointing saves again). Standalone on
purpose: it imports nothing from kvscale, so the estimator it checks cannot leak into the count.
"""

from __future__ import annotations

import json
import sys
import weakref
from typing import Any


def _model(cfg: dict[str, Any], precision: str, attention: str) -> Any:
    import torch  # type: ignore[import-not-found]
    import transformers  # type: ignore[import-not-found]

    config = transformers.AutoConfig.for_model(**cfg)
    config._attn_implementation = attention
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.to(torch.bfloat16) if precision == "bf16" else model


class SavedBytes:
    """Bytes of the storages autograd holds, live and at their peak."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude  # parameter storages: held anyway, counted as parameters
        self.refs: dict[int, int] = {}  # storage pointer -> saved tensors that use it
        self.sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0
        self.weight_copies = 0  # autocast's 16-bit copies of parameters, saved for backward
        self.where: list[str] = []  # the module running now (innermost last)
        self.by_module: dict[str, int] = {}  # first-saved bytes by module type, over the forward pass

    def pack(self, t: Any) -> Any:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr in self.exclude or st.nbytes() == 0:
            return t
        fn = t.grad_fn
        if fn is not None and type(fn).__name__ == "ToCopyBackward0" and \
                type(fn.next_functions[0][0]).__name__ == "AccumulateGrad" and ptr not in self.refs:
            self.weight_copies += st.nbytes()
        if ptr not in self.refs:
            self.refs[ptr], self.sizes[ptr] = 0, st.nbytes()
            at = self.where[-1] if self.where else "model"
            self.by_module[at] = self.by_module.get(at, 0) + st.nbytes()
            self.live += st.nbytes()
            self.peak = max(self.peak, self.live)
        self.refs[ptr] += 1
        weakref.finalize(t, self._release, ptr)
        return t

    def _release(self, ptr: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            del self.refs[ptr]
            self.live -= self.sizes.pop(ptr)


def _state_bytes(optimizer: Any) -> int:
    """Optimizer state tensors; the per-parameter ``step`` counters are host scalars and left out."""
    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if hasattr(v, "untyped_storage") and v.dim() > 0:
                total += v.numel() * v.element_size()
    return total


def main(raw: str) -> dict[str, Any]:
    import torch
    from torch.autograd.graph import saved_tensors_hooks  # type: ignore[import-not-found]

    args = json.loads(raw)
    torch.set_num_threads(1)
    precision = args.get("precision", "bf16")
    model = _model(args["config"], precision, args.get("attention", "sdpa"))
    if args.get("lora"):
        import peft  # type: ignore[import-not-found]

        lora = args["lora"]
        model = peft.get_peft_model(model, peft.LoraConfig(r=lora["r"], lora_alpha=2 * lora["r"], lora_dropout=0.0,
                                                           target_modules=lora["targets"]))
    if args.get("checkpointing") == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()  # reentrant checkpointing needs an input that requires grad
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    params = list(model.parameters())
    opt = {"adamw": torch.optim.AdamW, "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9)}[
        args.get("optimizer", "adamw")](trainable)
    b, s = args["batch"], args["seq"]
    vocab = args["config"]["vocab_size"]
    ids = torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(1))
    counter = SavedBytes({p.untyped_storage().data_ptr() for p in params})
    detail = bool(args.get("detail"))
    names = {id(m): n for n, m in model.named_modules()}

    def enter(m: Any, _args: Any) -> None:
        counter.where.append(names.get(id(m), type(m).__name__) if detail else type(m).__name__)

    def leave(_m: Any, _args: Any, _out: Any) -> None:
        counter.where.pop()

    for module in model.modules():
        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "mixed")
    with saved_tensors_hooks(counter.pack, lambda t: t):
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        forward_peak = counter.peak
        loss.backward()
    del loss
    opt.step()
    return {
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "parameter_bytes": sum(p.numel() * p.element_size() for p in params),
        "gradient_bytes": sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None),
        "optimizer_bytes": _state_bytes(opt),
        "activation_bytes": counter.peak,
        "forward_activation_bytes": forward_peak,
        "autocast_weight_copy_bytes": counter.weight_copies,
        "by_module": counter.by_module,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
