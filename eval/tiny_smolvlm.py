"""A tiny random-weight SmolVLM2-shaped checkpoint, built offline: for tests and smoke runs of
eval.compare where the real SmolVLM2 weights are not on disk.

    python -m eval.tiny_smolvlm DIR        # then: python -m eval.compare --smolvlm DIR ...

Same files and classes as the real checkpoint (config.json + model.safetensors for
SmolVLMForConditionalGeneration, tokenizer with SmolVLM's image/utterance tokens,
preprocessor_config.json with `video_sampling`), only the sizes differ: 64 px frames, 16 px
patches, pixel shuffle 2, so 4 visual tokens per frame (the real 256M model: 64).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

IMAGE_TOKENS = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]


def save_tiny_smolvlm(directory: str | Path, seed: int = 0, image_size: int = 64) -> Path:
    """Write a tiny SmolVLM checkpoint loadable by AutoModelForImageTextToText and eval.smolvlm."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil

    from fvlm.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in IMAGE_TOKENS}
    config = SmolVLMConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": 16},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 2048, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": ids["<end_of_utterance>"]},
        scale_factor=2, image_token_id=ids["<image>"], pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<end_of_utterance>"]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = SmolVLMImageProcessorPil(
        size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size}, do_image_splitting=False,
        video_sampling={"fps": 1, "max_frames": 64, "video_size": {"longest_edge": image_size}},
    )
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.tiny_smolvlm", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(save_tiny_smolvlm(args.out, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
