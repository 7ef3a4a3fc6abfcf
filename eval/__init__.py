"""fvlm evaluation: the lmms-eval plugin, offline ShapesQA tasks, the SmolVLM2 comparison and the
upstream-style likelihood MCQ. See eval/README.md.

    python -m lmms_eval --model fvlm --model_args pretrained=DIR,mode=coarse_fine \\
        --tasks shapesqa --include_path "$(python -m eval.tasks)" --output_path OUT --log_samples
    python -m eval.report OUT
    python -m eval.compare --tasks shapesqa --smolvlm HuggingFaceTB/SmolVLM2-256M-Video-Instruct
    python -m eval.mcq --tasks shapesqa_mc

Heavy imports happen inside the modules that need them, so `import eval` and the lmms-eval entry
point (eval.plugin) stay cheap.
"""
