"""Engine: FoveatedVLM inference on a static LLM KV cache, with CUDA graphs and the autoregressive frame step.

Why. In autoregressive mode every frame costs one deep query (12 small DINO layers over that frame's
cached K/V) plus one LLM token: a few hundred tiny kernels. Eager, through transformers with a
DynamicCache, that took 29 ms per frame on an H100 (launch and Python overhead, not arithmetic), so
a 64-frame video cost ~1.9 s before the question was read. Here the step has fixed shapes and no
host-side decisions, so it is captured once in a CUDA graph and replayed per frame (optionally
after torch.compile has fused its elementwise work). Decoding reuses the same cache and graphs.

Design.
- `Slots`: the LLM KV cache preallocated as k, v [layers, B, kv_heads, C, head_dim] plus
  valid [B, C] (the slot holds a real token), col [] (next free slot), count [B] (real tokens so
  far = the next position id) and last [B, d] (hidden state of the slot before the next frame).
  All are device tensors updated in place, so a replayed graph advances them by itself. Slot j of
  row b holds sequence column j as in the DynamicCache path (pads included, masked), except that
  text blocks are left-padded to a power of two (`bucket`) so that a few graphs serve every prompt.
- `llm_forward`: a Llama-family decoder over l new tokens against those slots, calling the HF
  modules' weights and sub-modules (norm weights, projections, rotary embedding, MLP): transformers'
  arithmetic without its mask building, cache objects or data-dependent control flow. Why not
  transformers' StaticCache: its API differs between the versions we support (5.17-5.2x), its
  mask construction is not written for capture, and its step launches ~1,500 kernels; this one
  ~700 for a whole frame step at full size, 120 fewer with `fuse` (RMSNorm as torch's fused op; the
  rotary embedding as one small matmul with a per-position rotation matrix; o_proj and down_proj
  add their residual inside the GEMM; with fuse, the default on CUDA, q/k/v and gate/up are one
  GEMM each and q and k share one rotary matmul, see `Fused`). Attention: SDPA over all C slots
  with an additive mask built once per call (valid and causal; a token always sees its own slot,
  so a row of pads cannot make NaNs); grouped-query heads are folded into the query rows instead of
  repeating K/V.
- `frame_step`: query = llm_to_query(last) (q_init where no real slot precedes the frame) ->
  the deep query over the frame's K/V and the projection into the LLM (FoveatedVLM.frame_tokens) ->
  one LLM token -> last. Under a graph its inputs are static buffers: each row's frame K/V (every
  layer) is copied in by one multi-tensor copy before the replay. Patches are encoded in batched
  passes of `frame_chunk` frames (default FRAME_CHUNK), never recomputed and never duplicated. In
  autoregressive mode each chunk runs just before its frames, so only one chunk's K/V is held and
  the host queues the next chunk while the device replays. The coarse modes need every frame's K/V
  at once: the chunks' K/V are copied into buffers for all frames (`encode_in_chunks`), so only one
  chunk's activations are alive at a time.
- `Engine` (one per model, `model.engine`; rebuilt with the same options when the weights move):
  up to `max_states` `State`s (slots + the graphs captured against them), reused across calls; a
  state stays reserved while the EngineCache of a Prefill that uses it is alive, so concurrent
  prefills never share one. Graphs: per state, one per text bucket, one for the frame step (per
  N, D, with/without attention maps). Batches of any size and padding are supported (a padded
  frame slot is a masked zero token). Text blocks longer than MAX_GRAPH_TOKENS run without a graph;
  if a capture fails, a warning says so and the engine continues without graphs.

Options: `Engine(model, graphs=True, compile=False, fuse=None)`. Graphs are used on CUDA only; on CPU (or with
graphs=False) the same static-slot functions run eagerly, which is what the CPU tests compare with
the reference. compile=True runs the frame step and the one-token step through torch.compile first
(the first call compiles for a minute or so). Which path a call takes (the engine or the reference
DynamicCache path) is chosen by VLMBase.use_engine: see docs/engine.md.

The engine cannot serve (the reference path runs instead) an LLM that is not llama-family, dynamic
RoPE or the shallow query (ablation A1) — model-level reasons, warned about once when the engine is
built — nor training mode (dropout), autocast or a batch without a real frame (per call, silently).
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .batch import Batch
from .config import MODES
from .encoder import PatchCache
from .errors import ConfigError, InputError
from .sequence import LLMInput
from .vlm import Prefill

SUPPORTED_LLMS = ("llama",)  # model_type of the LLM (SmolLM2 is llama)
MAX_GRAPH_TOKENS = 1024  # longer text blocks run eagerly (their kernels are large anyway)
DECODE_ROOM = 256  # slots reserved after the prompt; the slots grow (and graphs are recaptured) beyond
SLOT_MULTIPLE = 256  # capacities are rounded up to this, so one set of graphs serves many lengths
MAX_STATES = 4  # states (slots + graphs) kept per engine; the oldest idle one goes first
FRAME_CHUNK = 16  # default frames per patch pass (Engine frame_chunk)
WARMUP = 2  # runs before a capture: cuBLAS handles, Triton autotuning, torch.compile


# ---- what the engine serves -----------------------------------------------------------------------
def unsupported(model: torch.nn.Module) -> str | None:
    """Why the engine cannot serve `model` at all (an LLM, RoPE or query it does not implement), or None."""
    cfg = model.llm.config
    if cfg.model_type not in SUPPORTED_LLMS:
        return f"LLM type {cfg.model_type!r} (supported: {SUPPORTED_LLMS})"
    rope = getattr(model.llm.get_decoder().rotary_emb, "rope_type", "default")
    if "dynamic" in rope:
        return f"dynamic RoPE ({rope!r})"
    if not model.config.deep_query:
        return "shallow query (ablation A1)"
    return None


def skipped(model: torch.nn.Module, batch: Batch) -> str | None:
    """Why this call runs the reference path although the engine serves the model, or None."""
    if model.training:
        return "training mode (dropout)"
    if torch.is_autocast_enabled(next(model.parameters()).device.type):
        return "autocast is on"
    if not bool(batch.frame_mask.any()):
        return "no real frame"
    return None


def fingerprint(model: torch.nn.Module) -> tuple:
    """Where the weights live and how often they were written in place: an engine built for other
    storage (after .to(), .double()) or older values (load_state_dict, an optimizer step) is stale."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters()) + (next(model.parameters()).dtype,)


def bucket(n: int) -> int:
    """Slots a text block of n tokens takes: 1 stays 1 (frames, decoding), else a power of two >= 8."""
    return 1 if n == 1 else max(8, 1 << (n - 1).bit_length())


# ---- the computation (pure functions of the model and the slots: eager, compiled or captured) ----
class Slots(NamedTuple):
    k: torch.Tensor  # [layers, B, kv_heads, C, head_dim]
    v: torch.Tensor  # [layers, B, kv_heads, C, head_dim]
    valid: torch.Tensor  # [B, C] bool: the slot holds a real token
    col: torch.Tensor  # [] long: next free slot
    count: torch.Tensor  # [B] long: real tokens so far (= next position id)
    last: torch.Tensor  # [B, d] hidden state of the slot before the next frame
    gaze: torch.Tensor  # [B, 2] float32 the last frame's gaze centre, NaN before a row's first frame


@torch.inference_mode(False)  # normal tensors: usable in and out of inference mode
def new_slots(model: torch.nn.Module, B: int, C: int) -> Slots:
    cfg = model.llm.config
    dec = model.llm.get_decoder()
    p = next(model.parameters())
    kv = (len(dec.layers), B, cfg.num_key_value_heads, C, dec.layers[0].self_attn.head_dim)
    zeros = functools.partial(torch.zeros, device=p.device)
    return Slots(  # zeros, not empty: a masked slot must never hold NaN (0 * NaN = NaN in p @ V)
        zeros(kv, dtype=p.dtype), zeros(kv, dtype=p.dtype), zeros((B, C), dtype=torch.bool),
        zeros((), dtype=torch.long), zeros(B, dtype=torch.long), zeros((B, cfg.hidden_size), dtype=p.dtype),
        torch.full((B, 2), float("nan"), device=p.device),
    )


class Fused(NamedTuple):
    """One LLM layer's projections that read the same input, stacked so that each group is one GEMM
    (a copy of the weights, made when the engine is built; the engine is rebuilt when they change)."""

    qkv: torch.Tensor  # [(H + 2 * Hkv) * hd, d]: q_proj, k_proj, v_proj weights
    qkv_bias: torch.Tensor | None  # [(H + 2 * Hkv) * hd] (attention_bias models), else None
    gate_up: torch.Tensor  # [2 * I, d]: gate_proj, up_proj weights
    gate_up_bias: torch.Tensor | None  # [2 * I] (mlp_bias models), else None


@torch.no_grad()
@torch.inference_mode(False)
def fuse_projections(model: torch.nn.Module) -> list[Fused]:
    """Per LLM layer, the q/k/v and the gate/up weights stacked (fvlm.engine.Fused)."""
    def stack(*linears: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = torch.cat([lin.weight for lin in linears])
        if all(lin.bias is None for lin in linears):
            return weight, None
        return weight, torch.cat([lin.weight.new_zeros(lin.out_features) if lin.bias is None else lin.bias
                                  for lin in linears])

    dec = model.llm.get_decoder()
    return [Fused(*stack(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                  *stack(layer.mlp.gate_proj, layer.mlp.up_proj))
            for layer in dec.layers[: model.llm.config.num_hidden_layers]]


def _rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An HF RMSNorm module (weight, variance_epsilon) as one fused op; same value in fp32,
    within one rounding of transformers' fp32-upcast version in bf16."""
    return F.rms_norm(x, x.shape[-1:], norm.weight, norm.variance_epsilon)


def _rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' rotary embedding x * cos + rotate_half(x) * sin as one matrix per position:
    x [.., hd] @ R [hd, hd], R = diag(cos) + (rotate_half as a matrix) * sin. cos, sin [B, l, hd]
    -> R [B, l, hd, hd] (one small batched matmul per q or k instead of five elementwise kernels)."""
    hd = cos.shape[-1]
    eye = torch.eye(hd, dtype=cos.dtype, device=cos.device)
    half = eye.roll(hd // 2, dims=0)  # x @ half = cat(x2, x1)
    sign = torch.cat([-eye.new_ones(hd // 2), eye.new_ones(hd // 2)])  # rotate_half = cat(-x2, x1)
    return torch.diag_embed(cos) + half * (sign * sin)[..., None, :]


def _add_linear(h: torch.Tensor, linear: torch.nn.Linear, y: torch.Tensor) -> torch.Tensor:
    """h + linear(y) as one GEMM (addmm) when the layer has no bias. h [.., d_out], y [.., d_in]."""
    if linear.bias is not None:
        return h + linear(y)
    return torch.addmm(h.reshape(-1, h.shape[-1]), y.reshape(-1, y.shape[-1]), linear.weight.t()).view(h.shape)


def llm_forward(model: torch.nn.Module, fused: list[Fused] | None, s: Slots, x: torch.Tensor,
                real: torch.Tensor) -> torch.Tensor:
    """l new tokens x [B, l, d] (real [B, l] bool) into slots col..col+l-1 -> final hidden [B, l, d].
    fused: fuse_projections(model) (q/k/v and gate/up as one GEMM each), or None (the modules' own)."""
    dec = model.llm.get_decoder()
    cfg = model.llm.config
    B, l, _ = x.shape
    C = s.valid.shape[1]
    H, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, dec.layers[0].self_attn.head_dim
    G = H // Hkv  # query heads per kv head: head h = kv * G + g becomes row g * l + i of kv head kv
    slot = s.col + torch.arange(l, device=x.device)  # [l]
    pos = (s.count[:, None] + real.long().cumsum(1) - 1).clamp(min=0)  # [B, l] as sequence.positions
    s.valid.index_copy_(1, slot, real)
    ar = torch.arange(C, device=x.device)
    see = (s.valid[:, None, :] & (ar <= slot[:, None])) | (ar == slot[:, None])  # [B, l, C] (own slot always)
    bias = torch.where(see, 0.0, float("-inf")).to(x.dtype)[:, None].repeat(1, 1, G, 1)  # [B, 1, G*l, C]
    rot = _rotation(*dec.rotary_emb(x, pos))  # [B, l, hd, hd]
    h = x
    for i, layer in enumerate(dec.layers[: cfg.num_hidden_layers]):
        att, mlp = layer.self_attn, layer.mlp
        y = _rms_norm(layer.input_layernorm, h)
        if fused is None:
            q, k, v = att.q_proj(y), att.k_proj(y), att.v_proj(y)
            q, k = q.view(B, l, H, hd) @ rot, k.view(B, l, Hkv, hd) @ rot  # [B, l, H | Hkv, hd]
        else:  # one GEMM for q, k, v and one rotary matmul for q and k together
            qkv = F.linear(y, fused[i].qkv, fused[i].qkv_bias)  # [B, l, (H + 2 * Hkv) * hd]
            q, k = (qkv[..., : (H + Hkv) * hd].view(B, l, H + Hkv, hd) @ rot).split([H, Hkv], 2)
            v = qkv[..., (H + Hkv) * hd :]  # [B, l, Hkv * hd]
        q = q.transpose(1, 2)  # [B, H, l, hd]
        s.k[i].index_copy_(2, slot, k.transpose(1, 2))
        s.v[i].index_copy_(2, slot, v.reshape(B, l, Hkv, hd).transpose(1, 2))
        o = F.scaled_dot_product_attention(q.reshape(B, Hkv, G * l, hd), s.k[i], s.v[i], attn_mask=bias,
                                           scale=att.scaling)  # [B, Hkv, G*l, hd]
        # reshape, not view: CUDA's SDPA kernels may return o in a layout where [B, Hkv, G*l] is not one run
        h = _add_linear(h, att.o_proj, o.reshape(B, H, l, hd).transpose(1, 2).reshape(B, l, H * hd))
        y = _rms_norm(layer.post_attention_layernorm, h)
        if fused is None:
            gate, up = mlp.gate_proj(y), mlp.up_proj(y)
        else:
            gate, up = F.linear(y, fused[i].gate_up, fused[i].gate_up_bias).chunk(2, -1)  # [B, l, I] each
        h = _add_linear(h, mlp.down_proj, mlp.act_fn(gate) * up)
    s.col.add_(l)
    s.count.add_(real.sum(1))
    return _rms_norm(dec.norm, h)


def frame_step(
    model: torch.nn.Module, fused: list[Fused] | None, s: Slots, kv: list[tuple[torch.Tensor, torch.Tensor]],
    flags: torch.Tensor, with_probs: bool, backend: str | None,
) -> torch.Tensor | None:
    """One frame for every row. kv: per DINO layer (k, v) [B, N, D] of each row's frame; flags [2, B]
    bool: (the frame is real, a real slot precedes it). Appends one token; returns probs [B, L, H, N]."""
    real, has_prev = flags[0], flags[1]
    B = real.shape[0]
    q = torch.where(has_prev[:, None], model.llm_to_query(s.last), model.q_init.expand(B, -1))  # [B, qd]
    token, _, probs, gaze = model.frame_tokens(q, PatchCache(kv=kv), with_probs, backend=backend,
                                               prev_gaze=s.gaze)
    if gaze is not None:  # the gaze embedding's move needs each row's previous centre
        s.gaze.copy_(torch.where(real[:, None], gaze, s.gaze))
    token = token * real[:, None]  # [B, d]; pads are zeros, as in the eager path
    s.last.copy_(llm_forward(model, fused, s, token[:, None], real[:, None])[:, 0])
    return probs


# ---- graphs, states, the engine -------------------------------------------------------------------
class Graph:
    """fn() captured once in a CUDA graph; replay() reruns it on whatever its static inputs hold now.

    statics: the tensors fn reads, which the caller refills before each replay."""

    def __init__(self, fn: Callable[[], object], statics: dict[str, object], s: Slots | None):
        self.statics = statics
        saved = [t.clone() for t in s[2:]] if s else []  # warm-ups advance the slots: put them back after
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                fn()
                for t, u in zip(s[2:] if s else (), saved):
                    t.copy_(u)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):  # recorded, not run
            self.out = fn()

    def replay(self):
        self.graph.replay()
        return self.out


class State:
    """Slots of one batch shape plus the graphs captured against them."""

    def __init__(self, model: torch.nn.Module, B: int, C: int):
        self.slots = new_slots(model, B, C)
        self.used = 0  # host mirror of slots.col
        self.graphs: dict[tuple, Graph] = {}
        self.owner: Callable[[], object] = lambda: None  # weakref to the EngineCache holding it

    @property
    def batch_size(self) -> int:
        return self.slots.valid.shape[0]

    @property
    def capacity(self) -> int:
        return self.slots.valid.shape[1]

    def reset(self) -> None:
        for t in self.slots[2:]:
            t.zero_()
        self.slots.gaze.fill_(float("nan"))
        self.used = 0

    def grow(self, model: torch.nn.Module, C: int) -> None:
        """More slots (keeping the filled ones); the graphs are recaptured on next use."""
        new = new_slots(model, self.batch_size, C)
        old = self.capacity
        new.k[:, :, :, :old].copy_(self.slots.k)
        new.v[:, :, :, :old].copy_(self.slots.v)
        new.valid[:, :old].copy_(self.slots.valid)
        self.slots = new._replace(col=self.slots.col, count=self.slots.count, last=self.slots.last,
                                  gaze=self.slots.gaze)
        self.graphs.clear()


class EngineCache:
    """Prefill.cache of the engine: decoding continues in the static slots of one reserved State."""

    def __init__(self, engine: Engine, state: State):
        self.engine, self.state = engine, state
        state.owner = weakref.ref(self)

    def append(self, embeds: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, l, d] appended (real [B, l] bool, default all real) -> final hidden states [B, l, d]."""
        if real is None:
            real = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        return self.engine.text(self.state, embeds, real.bool())

    def get_seq_length(self) -> int:
        return self.state.used


class Engine:
    """A FoveatedVLM's inference engine: static KV slots, CUDA graphs and (compile=True) compiled steps.

    max_length: slots each new state starts with (rounded up to SLOT_MULTIPLE; a state grows when a
    prompt or decoding needs more); max_states: states kept at once (one per concurrent prefill and
    batch size). graphs: capture CUDA graphs (CUDA only; elsewhere the same functions run eagerly).
    fuse: run q/k/v and gate/up as one GEMM each, from a copy of those weights (fuse_projections);
    None (the default): on CUDA, where a token's time is its kernel launches, not on CPU, where it
    saves nothing measurable and the copy costs memory. frame_chunk: frames per patch pass (fewer:
    less memory, more passes)."""

    def __init__(self, model: torch.nn.Module, max_length: int = 0, max_states: int = MAX_STATES,
                 graphs: bool = True, compile: bool = False, fuse: bool | None = None,
                 frame_chunk: int = FRAME_CHUNK):
        if not (isinstance(frame_chunk, int) and frame_chunk >= 1):
            raise ConfigError(f"Engine frame_chunk={frame_chunk!r}: give the frames per patch pass, an int >= 1")
        self.model = model
        self.options = {"max_length": max_length, "max_states": max_states, "graphs": graphs, "compile": compile,
                        "fuse": fuse, "frame_chunk": frame_chunk}
        self.fingerprint = fingerprint(model)
        self.unsupported = unsupported(model)
        on_cuda = next(model.parameters()).device.type == "cuda"
        fuse = on_cuda if fuse is None else fuse
        self.fused = fuse_projections(model) if fuse and self.unsupported is None else None
        if self.unsupported:
            warnings.warn(f"fvlm.engine: cannot serve this model ({self.unsupported}); "
                          "it runs the reference path", stacklevel=2)
        self.use_graphs = graphs and on_cuda
        self.backend = "torch" if compile else None  # torch.compile traces the torch reference
        self.states: list[State] = []
        self._frame: Callable = functools.partial(frame_step, model, self.fused)
        self._one: Callable = functools.partial(llm_forward, model, self.fused)  # one token (frames, decoding)
        self._many: Callable = functools.partial(llm_forward, model, self.fused)  # text blocks: never compiled
        if compile:
            self._frame = torch.compile(self._frame, fullgraph=True, dynamic=False)
            self._one = torch.compile(self._one, fullgraph=True, dynamic=False)

    def stale(self, model: torch.nn.Module) -> bool:
        """Whether `model`'s weights are no longer the ones this engine was built on."""
        return model is not self.model or fingerprint(model) != self.fingerprint

    def serves(self, batch: Batch) -> bool:
        """Whether prefill(batch) should run here (else the model's reference path)."""
        return self.unsupported is None and skipped(self.model, batch) is None

    def release(self) -> None:
        """Free the static slots and graphs (compiled code is kept); the next call rebuilds them."""
        self.states.clear()

    def acquire(self, B: int, C: int) -> EngineCache:
        """A free state with >= C slots for batch size B (reset), reserved by the returned EngineCache."""
        for st in self.states:
            if st.batch_size == B and st.capacity >= C and st.owner() is None:
                st.reset()
                return EngineCache(self, st)
        idle = [st for st in self.states if st.owner() is None]
        if len(self.states) >= self.options["max_states"] and idle:  # bound the memory: drop the oldest idle
            self.states.remove(idle[0])
        C = max(C, self.options["max_length"])
        st = State(self.model, B, -(-C // SLOT_MULTIPLE) * SLOT_MULTIPLE)
        self.states.append(st)
        return EngineCache(self, st)

    def _graph(self, st: State, key: tuple, build: Callable[[], tuple[Callable, dict]]) -> Graph | None:
        """The graph `key` of state st, captured on first use (None if graphs are off or failed).
        build() -> (fn, statics): fn() reads the static tensors in statics."""
        if not self.use_graphs:
            return None
        if key not in st.graphs:
            with torch.inference_mode(False):  # static inputs usable in and out of inference mode
                fn, statics = build()
            try:
                st.graphs[key] = Graph(fn, statics, st.slots)
            except RuntimeError as e:  # e.g. an op that cannot be captured: keep going, without graphs
                warnings.warn(f"fvlm.engine: CUDA graph capture failed, running without graphs: {e}",
                              stacklevel=2)
                self.use_graphs = False
                return None
        return st.graphs[key]

    def text(self, st: State, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Append a text block x [B, l, d] (real [B, l]) -> final hidden states [B, l, d]."""
        B, l, d = x.shape
        lb = bucket(l)
        if lb > l:  # left-pad to the bucket: pads are masked and take no position
            x = torch.cat([x.new_zeros(B, lb - l, d), x], dim=1)
            real = torch.cat([real.new_zeros(B, lb - l), real], dim=1)
        if st.used + lb > st.capacity:
            st.grow(self.model, -(-(st.used + lb + DECODE_ROOM) // SLOT_MULTIPLE) * SLOT_MULTIPLE)
        fn = self._one if lb == 1 else self._many  # only the one-token step is worth compiling

        def build() -> tuple[Callable, dict]:
            statics = {"x": torch.zeros_like(x), "real": torch.zeros_like(real)}
            return (lambda: fn(st.slots, statics["x"], statics["real"])), statics

        g = self._graph(st, ("text", lb), build) if lb <= MAX_GRAPH_TOKENS else None
        if g is None:
            h = fn(st.slots, x, real)
        else:
            g.statics["x"].copy_(x)
            g.statics["real"].copy_(real)
            h = g.replay().clone()
        st.used += lb
        return h[:, lb - l :]

    def frame(self, st: State, cache: PatchCache, rows: list[int], flags: torch.Tensor,
              with_probs: bool) -> torch.Tensor | None:
        """One frame step: row b reads cache row rows[b]; flags [2, B] (see frame_step)."""
        if st.used + 1 > st.capacity:
            st.grow(self.model, st.capacity + SLOT_MULTIPLE)
        k0 = cache.kv[0][0]  # [F, N, D]
        step = functools.partial(self._frame, with_probs=with_probs, backend=self.backend)

        def build() -> tuple[Callable, dict]:
            L, B = len(cache.kv), st.batch_size
            statics = {"kv": torch.zeros((L, 2, B, *k0.shape[1:]), dtype=k0.dtype, device=k0.device),
                       "flags": torch.zeros_like(flags)}
            kv = [(statics["kv"][i, 0], statics["kv"][i, 1]) for i in range(L)]
            return (lambda: step(st.slots, kv, statics["flags"])), statics

        g = self._graph(st, ("frame", *k0.shape[1:], with_probs), build)
        if g is None:
            idx = torch.tensor(rows, device=flags.device)
            probs = step(st.slots, [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in cache.kv], flags)
        else:
            copy_frames(g.statics["kv"], cache, rows)
            g.statics["flags"].copy_(flags)
            probs = g.replay()
            probs = None if probs is None else probs.clone()
        st.used += 1
        return probs

    # ---- prefill (the entry point) ----------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, batch: Batch, mode: str, return_attention: bool = False,
                on_step: Callable | None = None) -> Prefill:
        """FoveatedVLM.prefill on the engine, in any mode: the same outputs; Prefill.cache is an EngineCache.

        on_step(t, real [B], probs [n_real_t, L, H, N] | None) after each frame in autoregressive mode."""
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; use one of {MODES}")
        model = self.model
        if mode == "autoregressive":
            return self._autoregressive(batch, return_attention, on_step)

        def scratch_pass(inp: LLMInput) -> torch.Tensor:  # coarse_fine's coarse pass, in a scratch state
            return self.acquire(batch.batch_size, bucket(inp.mask.shape[1])).append(inp.embeds, inp.mask)

        cache = encode_in_chunks(model, batch, self.options["frame_chunk"])  # as model.encode_frames(batch)
        inp, probs, coarse = model.read_frames_coarse(batch, cache, mode, return_attention, scratch_pass)
        ec = self.acquire(batch.batch_size, bucket(inp.mask.shape[1]) + DECODE_ROOM)
        h = ec.append(inp.embeds, inp.mask)[:, -1]
        return self._result(ec, h, probs, coarse)

    def _autoregressive(self, batch: Batch, return_attention: bool, on_step: Callable | None) -> Prefill:
        """FoveatedVLM.read_frames_autoregressive (with the KV cache) on static slots, one graph replay per frame.

        The patch pass runs in chunks of frame_chunk frame slots, each just before its frames are read:
        the K/V cache of one chunk is alive at a time, and the host queues the next chunk's patch pass
        while the device is still replaying the previous chunk's frame steps (no sync inside the loop)."""
        model = self.model
        fm = batch.frame_mask
        B, T = fm.shape
        P, S = batch.prefix_ids.shape[1], batch.suffix_ids.shape[1]
        fm_host = fm.cpu()
        pixels = batch.pixel_values.flatten(0, 1)  # [B*T, 3, S, S]
        chunks = []  # (first slot, flat indices of its real frames (b-major), rows [t][b] into its cache)
        chunk = self.options["frame_chunk"]
        for t0 in range(0, T, chunk):
            sub = fm_host[:, t0 : t0 + chunk]  # [B, c]
            flat = (torch.arange(B)[:, None] * T + torch.arange(t0, t0 + sub.shape[1]))[sub]
            rows = (sub.flatten().long().cumsum(0) - 1).clamp(min=0).view(B, -1).T.tolist()
            chunks.append((t0, flat.to(pixels.device), rows))
        ec = self.acquire(B, bucket(P) + T + bucket(S) + DECODE_ROOM)
        st, s = ec.state, ec.state.slots
        has_prev = torch.zeros_like(fm[:, 0])
        if P > 0:
            emb = model.embed(batch.prefix_ids) * batch.prefix_mask[..., None]
            s.last.copy_(self.text(st, emb, batch.prefix_mask)[:, -1])
            has_prev = batch.prefix_mask[:, -1]
        flags = torch.stack([fm.T, torch.cat([has_prev[None], fm.T[:-1]])], dim=1)  # [T, 2, B]
        probs = []
        for t0, flat, rows in chunks:
            cache = model.encoder.encode_patches(pixels.index_select(0, flat))  # this chunk's real frames
            for j, row in enumerate(rows):
                p = self.frame(st, cache, row, flags[t0 + j], return_attention)
                probs.append(p)
                if on_step is not None:
                    on_step(t0 + j, fm[:, t0 + j], None if p is None else p[fm[:, t0 + j]])
            del cache  # (the allocator reuses it only after the queued steps that read it)
        h = s.last
        if S > 0:
            emb = model.embed(batch.suffix_ids) * batch.suffix_mask[..., None]
            h = self.text(st, emb, batch.suffix_mask)[:, -1]
        attention = torch.stack(probs, dim=1)[fm] if return_attention else None  # [n_real, L, H, N] cache order
        return self._result(ec, h, attention, None)

    def _result(self, ec: EngineCache, h: torch.Tensor, attention: torch.Tensor | None,
                coarse: torch.Tensor | None) -> Prefill:
        s = ec.state.slots
        return Prefill(
            cache=ec, mask=s.valid[:, : ec.state.used].clone(), next_position=s.count.clone(),
            logits=self.model.llm.get_output_embeddings()(h), attention=attention, coarse_attention=coarse,
        )


def encode_in_chunks(model: torch.nn.Module, batch: Batch, chunk: int) -> PatchCache:
    """model.encode_frames(batch) (the K/V of every real frame, row-major over [B, T]) in chunks of
    `chunk` frames, each chunk's K/V copied into per-layer buffers [F, N, D] for all F frames:
    the coarse modes need every frame's K/V at once, but only one chunk's pixels and activations
    are alive at a time, not all F frames', and the final features (queries do not read them) are
    not kept."""
    real = batch.frame_mask.flatten().nonzero()[:, 0]  # [F] real frames of pixels [B*T, 3, S, S]
    pixels = batch.pixel_values.flatten(0, 1)
    F_ = real.shape[0]
    kv: list[tuple[torch.Tensor, torch.Tensor]] = []
    for f0 in range(0, F_, chunk):
        part = model.encoder.encode_patches(pixels.index_select(0, real[f0 : f0 + chunk])).kv
        if F_ <= chunk:
            return PatchCache(kv=part)
        if not kv:
            kv = [(k.new_empty((F_, *k.shape[1:])), v.new_empty((F_, *v.shape[1:]))) for k, v in part]
        n = part[0][0].shape[0]
        torch._foreach_copy_([t[f0 : f0 + n] for pair in kv for t in pair], [t for pair in part for t in pair])
    return PatchCache(kv=kv)


def copy_frames(buf: torch.Tensor, cache: PatchCache, rows: list[int]) -> None:
    """buf [L, 2, B, N, D] <- every layer's K/V of cache row rows[b], in one multi-tensor copy."""
    dst, src = [], []
    for i, (k, v) in enumerate(cache.kv):
        for b, r in enumerate(rows):
            dst += [buf[i, 0, b], buf[i, 1, b]]
            src += [k[r], v[r]]
    torch._foreach_copy_(dst, src)
