"""Tiny random-weight models built offline from transformers config classes.

Used by the tests, the CPU benchmarks and as a stand-in wherever a real checkpoint is not
available. Same code path as real checkpoints: only the sizes differ.
"""

from __future__ import annotations

import torch
from transformers import Dinov2Config, LlamaConfig

from .tokenizer import train_tokenizer

CORPUS = [
    "What color is the triangle? red green blue yellow purple orange white cyan",
    "What shape is the red object? circle square triangle star diamond cross hexagon",
    "Which way does it move? left right up down. Where does it end up? top bottom",
    "How many circles are there? zero one two three four five six seven eight",
    "Describe the video. A red circle moves left and a blue square moves up.",
    "You are a helpful AI assistant. Write a brief caption for this video.",
]


def tiny_tokenizer(vocab_size: int = 320):
    return train_tokenizer(CORPUS * 4, vocab_size=vocab_size)


def tiny_vision_config(image_size: int = 32, patch_size: int = 8, hidden: int = 32, layers: int = 2,
                       heads: int = 2) -> Dinov2Config:
    return Dinov2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        mlp_ratio=2, image_size=image_size, patch_size=patch_size, layerscale_value=1.0,
    )


def tiny_llm_config(vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 4,
                    context: int = 512) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=context, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )


def tiny_model(seed: int = 0, architecture: str = "foveated", tokenizer=None, image_size: int = 32,
               **config_kwargs):
    """A tiny FoveatedVLM (or MultiTokenVLM) with random weights, deterministic by seed."""
    from .baseline import MultiTokenVLM
    from .model import FoveatedVLM

    tokenizer = tokenizer or tiny_tokenizer()
    torch.manual_seed(seed)
    cls = MultiTokenVLM if architecture == "multi_token" else FoveatedVLM
    config_kwargs.setdefault("query_dim", 16)
    config_kwargs.setdefault("tokens_per_frame", 4)
    model = cls.from_components(
        vision=tiny_vision_config(image_size=image_size),
        llm=tiny_llm_config(len(tokenizer)),
        tokenizer=tokenizer,
        image_size=image_size,
        **config_kwargs,
    )
    return model.eval()
