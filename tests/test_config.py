"""FVLMConfig round trip and validation; chat segmentation."""

import json

import pytest

from fvlm.chat import encode_chat
from fvlm.config import FVLMConfig
from fvlm.errors import ConfigError, InputError
from fvlm.tiny import tiny_llm_config, tiny_vision_config


def make_config(**kw):
    return FVLMConfig(vision=tiny_vision_config().to_dict(), llm=tiny_llm_config(300).to_dict(), **kw)


def test_round_trip_through_config_json(tmp_path):
    cfg = make_config(layout="video_first", query_dim=24, lambda_coarse=0.3, attention_map="layer:1")
    cfg.save(tmp_path)
    back = FVLMConfig.load(tmp_path)
    assert back == cfg
    assert json.loads((tmp_path / "config.json").read_text())["layout"] == "video_first"


def test_unknown_key_is_named(tmp_path):
    d = make_config().to_dict()
    d["visual_scael"] = 0.2
    with pytest.raises(ConfigError, match="visual_scael"):
        FVLMConfig.from_dict(d)


@pytest.mark.parametrize("key,value,match", [
    ("layout", "sideways", "layout"),
    ("query_dim", 0, "query_dim"),
    ("query_dim", "384", "query_dim"),
    ("visual_scale", -1.0, "visual_scale"),
    ("deep_query", "yes", "deep_query"),
    ("tokens_per_frame", 15, "square"),
    ("attention_map", "layer:x", "attention_map"),
    ("architecture", "perceiver", "architecture"),
])
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        make_config(**{key: value})


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        FVLMConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        FVLMConfig.load(tmp_path)
    with pytest.raises(ConfigError, match="model_type"):
        FVLMConfig(vision={"hidden_size": 3}, llm=tiny_llm_config(300).to_dict())


def test_chat_segments(tokenizer):
    c = encode_chat(tokenizer, "What color?", "red", layout="text_first", loss="answer")
    assert tokenizer.decode(c.prefix_ids).endswith("<|im_start|>user\nWhat color?")
    assert tokenizer.decode(c.suffix_ids).startswith("<|im_end|>\n<|im_start|>assistant\nred")
    assert not any(c.prefix_targets)
    v = encode_chat(tokenizer, "What color?", "red", layout="video_first", loss="all")
    assert v.prefix_ids == [] and all(v.suffix_targets)
    g = encode_chat(tokenizer, "What color?", None, layout="text_first", loss="none")
    assert tokenizer.decode(g.suffix_ids).endswith("<|im_start|>assistant\n")
    assert not any(g.suffix_targets)
    with pytest.raises(InputError):
        encode_chat(tokenizer, 42, None)
