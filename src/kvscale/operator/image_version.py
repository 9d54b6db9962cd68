"""Which vLLM release an image runs, and whether the estimator models it (pure).

The estimate uses the start-up profile of the image's release line (``estimator.vllm_profiles``:
where the CUDA-graph pool comes from, async scheduling); the rendered pod always passes the spec's
``--gpu-memory-utilization``, so the line's default does not apply. Its overheads are fitted on logs of
several releases and checked live on one, so a plan for another release is an estimate, not a
prediction. The release is read from the image tag (``v0.32.0``, ``0.32.0-cu128``,
``rocm7.0.0_vllm_0.11.2_...``); a tag without one is reported as unknown rather than guessed.
"""

from __future__ import annotations

import re

from ..estimator.vllm_profiles import VLLM_RELEASE, profile_for

_RELEASE = re.compile(r"(?:^|[_v-])(\d+)\.(\d+)(?:\.(\d+))?")


def image_release(image: str) -> tuple[int, int] | None:
    """(major, minor) of the vLLM release in an image tag, or None."""
    ref = image.split("@", 1)[0]
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""
    if "vllm" in tag:
        tag = tag.split("vllm", 1)[1]  # ROCm tags name the ROCm release first
    m = _RELEASE.search(tag)
    return (int(m.group(1)), int(m.group(2))) if m else None


def sizing_release(image: str | None) -> str:
    """The release whose profile sizes a plan for ``image``: its own where the tag names one."""
    found = image_release(image) if image else None
    return f"{found[0]}.{found[1]}" if found else VLLM_RELEASE


def release_check(image: str) -> tuple[str, str, str]:
    """(condition status, reason, message) of the VersionMatched condition."""
    modelled = tuple(int(x) for x in VLLM_RELEASE.split(".")[:2])
    found = image_release(image)
    if found is None:
        return ("Unknown", "VersionUnknown",
                f"image {image}: no vLLM release in the tag; the estimate assumes vLLM {VLLM_RELEASE}")
    if found != modelled:
        line = profile_for(f"{found[0]}.{found[1]}").line
        return ("False", "VLLMVersionMismatch",
                f"image {image} runs vLLM {found[0]}.{found[1]}, the estimator is checked against {VLLM_RELEASE}: "
                f"sized with the {line[0]}.{line[1]} line's profile, the KV cache vLLM allocates may differ from "
                "status.plan (status.estimatorCheck shows by how much)")
    return "True", "VersionMatched", f"image {image} runs the vLLM release the estimator models ({VLLM_RELEASE})"
