"""FoveatedEncoder: patch pass == DINOv2, K/V projected once, deep query == a hand-written reference."""

import math

import pytest
import torch

from fvlm.attention import query_attention, query_attention_torch
from fvlm.encoder import FoveatedEncoder, attention_parts
from fvlm.errors import ConfigError
from fvlm.tiny import tiny_vision_config


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    cfg = tiny_vision_config(image_size=32, patch_size=8, hidden=48, layers=3, heads=3)
    enc = FoveatedEncoder(cfg, query_dim=16).eval()
    for layer in enc.layers:  # non-trivial layer scales
        layer.layer_scale1.lambda1.data.uniform_(0.5, 1.5)
        layer.layer_scale2.lambda1.data.uniform_(0.5, 1.5)
    return enc


def test_patch_pass_equals_dinov2(encoder):
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        cache = encoder.encode_patches(x)
        ref = encoder.dino(pixel_values=x).last_hidden_state
    assert len(cache.kv) == 3 and cache.kv[0][0].shape == (4, 17, 48)
    assert torch.allclose(cache.features, ref, atol=1e-5)


def test_key_value_projections_run_once_per_layer(encoder):
    calls = {"k": 0, "v": 0, "q": 0}
    for layer in encoder.layers:
        q, k, v, _ = attention_parts(layer)
        q.register_forward_hook(lambda *a: calls.__setitem__("q", calls["q"] + 1))
        k.register_forward_hook(lambda *a: calls.__setitem__("k", calls["k"] + 1))
        v.register_forward_hook(lambda *a: calls.__setitem__("v", calls["v"] + 1))
    with torch.no_grad():
        encoder.encode_patches(torch.randn(2, 3, 32, 32))
    assert calls == {"k": 3, "v": 3, "q": 3}


def reference_deep_query(enc, query, pixels):
    """The deep query written out plainly: per layer, the query attends to that layer's patch
    keys/values (norm1 of the layer input, CLS included) and never to itself."""
    H = enc.num_heads
    h = enc.dino.embeddings(pixels)
    x = enc.query_input_proj(query)  # [F, D]
    F_, D = x.shape
    d = D // H
    for layer in enc.layers:
        qp, kp, vp, op = attention_parts(layer)
        n = layer.norm1(h)
        k = kp(n).view(F_, -1, H, d).transpose(1, 2)  # [F, H, N, d]
        v = vp(n).view(F_, -1, H, d).transpose(1, 2)
        q = qp(layer.norm1(x)).view(F_, H, 1, d)
        w = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1)  # [F, H, 1, N]: patches only
        x = x + layer.layer_scale1(op((w @ v).reshape(F_, D)))
        x = x + layer.layer_scale2(layer.mlp(layer.norm2(x)))
        h = layer(h)
    return enc.output_proj(enc.dino.layernorm(x))


def test_deep_query_matches_reference(encoder):
    pixels = torch.randn(3, 3, 32, 32)
    query = torch.randn(3, 16)
    with torch.no_grad():
        z, probs = encoder.query_attend(query, encoder.encode_patches(pixels), return_attention=True)
        ref = reference_deep_query(encoder, query, pixels)
    assert torch.allclose(z, ref, atol=1e-5)
    assert probs.shape == (3, 3, 3, 17)  # [F, L, H, N]: N patch+CLS keys, no slot for the query
    assert torch.allclose(probs.sum(-1), torch.ones(3, 3, 3), atol=1e-5)


def test_cached_kv_keeps_gradients(encoder):
    cache = encoder.encode_patches(torch.randn(2, 3, 32, 32))
    z, _ = encoder.query_attend(torch.randn(2, 16), cache)
    z.sum().backward()  # only the query path: patch features are not used
    assert attention_parts(encoder.layers[0])[1].weight.grad.abs().sum() > 0  # through cached K


def test_attention_reference_vs_einsum_on_strided_views():
    g = torch.Generator().manual_seed(3)
    F_, N, H, d = 3, 11, 4, 8
    qkv = torch.randn((F_, N, 3 * H * d), generator=g, dtype=torch.float64)
    k, v = qkv[..., H * d : 2 * H * d], qkv[..., 2 * H * d :]  # views with strides, like the cache
    q = torch.randn((F_, H, d), generator=g, dtype=torch.float64)
    res = query_attention_torch(q, k, v, return_probs=True, return_entropy=True)
    kh = k.reshape(F_, N, H, d).permute(0, 2, 1, 3)
    vh = v.reshape(F_, N, H, d).permute(0, 2, 1, 3)
    p = (q[:, :, None] @ kh.transpose(-1, -2) / math.sqrt(d)).softmax(-1)[:, :, 0]  # [F, H, N]
    assert torch.allclose(res.probs, p)
    assert torch.allclose(res.out, (p[:, :, None] @ vh)[:, :, 0])
    assert torch.allclose(res.entropy, -(p * p.log()).sum(-1))
    with pytest.raises(ConfigError, match="backend"):
        query_attention(q, k, v, backend="cuda-magic")


def test_shallow_query_uses_final_features_only(encoder):
    torch.manual_seed(0)
    cfg = tiny_vision_config(image_size=32, patch_size=8, hidden=48, layers=3, heads=3)
    enc = FoveatedEncoder(cfg, query_dim=16, deep_query=False).eval()
    with torch.no_grad():
        cache = enc.encode_patches(torch.randn(2, 3, 32, 32))
        z, probs = enc.query_attend(torch.randn(2, 16), cache, return_attention=True)
    assert cache.shallow_kv is not None and z.shape == (2, 48) and probs.shape == (2, 1, 3, 17)


def test_shallow_query_matches_the_published_formula_by_hand():
    """A1: the projected query x = W_in q is the attention query itself (no norm1, no q projection),
    split into heads against the last layer's K/V projections of norm1(final features); the
    attended vector then goes through DINO's final layernorm and output_proj."""
    torch.manual_seed(1)
    cfg = tiny_vision_config(image_size=32, patch_size=8, hidden=48, layers=3, heads=3)
    enc = FoveatedEncoder(cfg, query_dim=16, deep_query=False).eval()
    pixels, query = torch.randn(2, 3, 32, 32), torch.randn(2, 16)
    with torch.no_grad():
        z, probs = enc.query_attend(query, enc.encode_patches(pixels), return_attention=True)
        final = enc.dino(pixel_values=pixels).last_hidden_state  # [F, N, D]
        last = enc.layers[-1]
        _, kp, vp, _ = attention_parts(last)
        n = torch.nn.functional.layer_norm(final, (48,), last.norm1.weight, last.norm1.bias, last.norm1.eps)
        k, v = n @ kp.weight.T + kp.bias, n @ vp.weight.T + vp.bias  # [F, N, D]
        x = query @ enc.query_input_proj.weight.T  # [F, D], no bias
        H, d = 3, 16
        out = []
        for h in range(H):
            s = slice(h * d, (h + 1) * d)
            w = torch.softmax(torch.einsum("fd,fnd->fn", x[:, s], k[..., s]) / math.sqrt(d), -1)  # [F, N]
            assert torch.allclose(probs[:, 0, h], w, atol=1e-6)
            out.append(torch.einsum("fn,fnd->fd", w, v[..., s]))
        a = torch.cat(out, -1)  # [F, D]
        ln = enc.dino.layernorm
        a = torch.nn.functional.layer_norm(a, (48,), ln.weight, ln.bias, ln.eps)
        expected = a @ enc.output_proj.weight.T + enc.output_proj.bias
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-5)
