"""fvlm trainer: staged training of FoveatedVLM / MultiTokenVLM from webdataset shards.

    python -m trainer.run --config trainer/configs/tiny.yaml [--dry-run] [--set a.b=v ...]
    torchrun --nproc_per_node=N -m trainer.run --config ...
    python -m trainer.make_shards --manifest ann.jsonl --out DIR
    python -m trainer.scaling_grid --template trainer/configs/stage1_135M.yaml [--dry-run]

See trainer/README.md. The library (fvlm/) never imports the trainer.
"""
