"""The `lmms_eval.models` entry point: lmms-eval 0.7.3 reads its model registry (ModelRegistryV2)
from this group, so `python -m lmms_eval --model fvlm ...` works once fvlm is pip-installed.

    [project.entry-points."lmms_eval.models"]
    fvlm = "fvlm_eval.plugin:manifests"

Model ids:
    fvlm             FVLM, simple request format: every task type (generation and multiple choice)
    fvlm_chat        FVLMChat, chat request format (doc_to_messages); generation tasks only
    smolvlm2_frames  SmolVLM2 through transformers' SmolVLM classes, frames sampled like SmolVLM2

`fvlm` registers only its simple class on purpose: a manifest with both classes makes lmms-eval
pick the chat one, which cannot run multiple-choice (likelihood) tasks without --force_simple.
This module imports nothing heavy: lmms-eval loads it whenever it builds its model registry.

The class paths name this module's own package, the one the entry point imported: installed,
`fvlm_eval` (never a stray `eval/` in the working directory).
"""

from __future__ import annotations

from lmms_eval.models.registry_v2 import ModelManifest


def manifests() -> list[ModelManifest]:
    pkg = __package__
    return [
        ModelManifest(model_id="fvlm", simple_class_path=f"{pkg}.lmms_model.FVLM"),
        ModelManifest(model_id="fvlm_chat", chat_class_path=f"{pkg}.lmms_model.FVLMChat"),
        ModelManifest(model_id="smolvlm2_frames", simple_class_path=f"{pkg}.smolvlm.SmolVLM2"),
    ]
