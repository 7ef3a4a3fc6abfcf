"""End to end: what one foveated token per frame buys against 64 tokens per frame, same machine, same run.

    python -m benchmarks.e2e [--device cuda|cpu] [--frames 8,16,32,64] [--out DIR] [--smoke] [--no-compile]

Models, built from configs with random weights (timing does not depend on the weights):
- fVLM-135M-shaped: DINOv2-S/14 at 224 px (257 keys/frame) + SmolLM2-135M, one token per frame,
  text_first layout; measured in coarse_fine and autoregressive mode, eager (the reference path:
  transformers with a DynamicCache, generate(fast=False)) and on the inference engine ("fast":
  fvlm.engine, static KV cache and CUDA graphs; "compiled": Engine(compile=True), torch.compile of the
  frame step and the one-token step);
- SmolVLM2-256M-shaped: transformers' SmolVLMForConditionalGeneration with SigLIP-B/16 at 512 px
  and pixel shuffle x4 (1024 patches -> 64 tokens per frame), the same SmolLM2-135M, eager;
- B1: fvlm's MultiTokenVLM, the same DINO and LLM, 16 pooled tokens per frame, eager.
CPU runs use scaled-down stand-ins of all three (same structure, small widths; on CPU the fast
path runs without graphs) and label them so; --smoke uses even smaller ones (a CI check that runs).

Per frame count, batch 1 (bf16 on CUDA, fp32 on CPU):
- TTFT: pixel tensors already on the device (decoded frames given; file decoding excluded) ->
  logits of the first generated token (fvlm: `prefill`; SmolVLM: one forward with
  logits_to_keep=1), median of repeats after warm-up;
- step: the autoregressive frame step (deep query over one frame's cached K/V + one LLM token);
  eager: median gap between successive frames (on_step, synchronized); fast: the frame loop
  timed as a whole (graph replays back to back) divided by the frame count;
- decode tok/s: greedy tokens after the prompt, through the model's KV cache (no EOS stop);
- memory: peak and transient (peak minus the level before the call; weights excluded) of one
  TTFT call; the fast path's static slots and graph pools are listed as "held" (they outlive
  the call, like weights, and are reused by the next one).
Ratios are fVLM / SmolVLM2-shaped at the largest frame count, and engine / eager (TTFT, step) in the
same run. Prints a table, writes e2e.md,
e2e.json and e2e.png (TTFT and memory against frames) to --out, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from fvlm.batch import Batch
from fvlm.encoder import PatchCache
from fvlm.engine import DECODE_ROOM, Engine, Graph
from fvlm.progress import Progress, format_seconds, say

from .common import (
    allocated_mib,
    line_chart,
    machine,
    markdown_table,
    memory_mib,
    setup,
    sync,
    time_ms,
    write_outputs,
)

TARGETS = {  # the goals for the full-size models on an H100 at 64 frames
    "ttft_coarse_fine": 0.25, "ttft_autoregressive": 1.0, "transient_memory_coarse_fine": 0.2,
    "transient_memory_autoregressive": 0.2, "step_ms": 1.0,
}


@dataclass(frozen=True)
class Shapes:
    label: str
    dino: dict  # Dinov2Config kwargs
    llm: dict  # LlamaConfig kwargs (SmolLM2-135M-shaped)
    siglip: dict  # SmolVLM vision config kwargs
    scale_factor: int  # SmolVLM pixel shuffle: tokens/frame = (image/patch)^2 / scale^2
    query_dim: int
    prefix: int = 30  # fVLM text_first: system prompt + question tokens
    suffix: int = 6  # end of the user turn + assistant start
    frame_text: int = 7  # SmolVLM: "\nFrame from 00:05:" tokens before each frame's image block


SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5)
SHAPES = {
    "full": Shapes(
        "fVLM-135M-shaped vs SmolVLM2-256M-shaped (full size)",
        dino=dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=224, patch_size=14),
        llm=SMOLLM2_135M,
        siglip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=512, patch_size=16),
        scale_factor=4, query_dim=384,
    ),
    "cpu": Shapes(
        "CPU stand-ins (same structure, small widths): DINO 128x4 @112px, LLM 128x6, SigLIP 192x4 @256px",
        dino=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, image_size=112, patch_size=14),
        llm=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=8192),
        siglip=dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                    image_size=256, patch_size=16),
        scale_factor=2, query_dim=128,
    ),
    "smoke": Shapes(
        "smoke stand-ins (tiny; checks that the benchmark runs, numbers mean nothing)",
        dino=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14),
        llm=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096),
        siglip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    image_size=64, patch_size=16),
        scale_factor=2, query_dim=32, prefix=12, suffix=4, frame_text=3,
    ),
}
FVLM_VOCAB, SMOLVLM_VOCAB = 49152, 49280  # SmolLM2; SmolVLM2 adds image/fake/global tokens
FAKE, GLOBAL, IMAGE = 49189, 49190, 49191  # SmolVLM's special token ids here (any ids < vocab)


# ---- models and inputs --------------------------------------------------------------------------
def build_fvlm(s: Shapes, architecture: str, device: str, dtype: torch.dtype):
    from transformers import Dinov2Config, LlamaConfig

    from fvlm.baseline import MultiTokenVLM
    from fvlm.config import FVLMConfig
    from fvlm.model import FoveatedVLM

    config = FVLMConfig(
        vision=Dinov2Config(**s.dino).to_dict(),
        llm=LlamaConfig(vocab_size=FVLM_VOCAB, tie_word_embeddings=True, **s.llm).to_dict(),
        architecture=architecture, tokens_per_frame=16, image_size=s.dino["image_size"],
        query_dim=s.query_dim, layout="text_first",
    )
    cls = MultiTokenVLM if architecture == "multi_token" else FoveatedVLM
    with torch.device(device):
        model = cls(config)
    return model.to(dtype).eval()


def build_smolvlm(s: Shapes, device: str, dtype: torch.dtype):
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    config = SmolVLMConfig(
        vision_config=s.siglip,
        text_config=dict(model_type="llama", vocab_size=SMOLVLM_VOCAB, tie_word_embeddings=True,
                         pad_token_id=2, bos_token_id=1, eos_token_id=2, **s.llm),
        scale_factor=s.scale_factor, image_token_id=IMAGE, pad_token_id=2,
    )
    with torch.device(device):
        model = SmolVLMForConditionalGeneration(config)
    return model.to(dtype).eval()


def smolvlm_tokens_per_frame(s: Shapes) -> int:
    return (s.siglip["image_size"] // s.siglip["patch_size"]) ** 2 // s.scale_factor**2


def fvlm_batch(s: Shapes, T: int, device: str, dtype: torch.dtype, g: torch.Generator) -> Batch:
    S = s.dino["image_size"]
    ids = lambda n: torch.randint(100, 49000, (1, n), generator=g)
    ones = lambda n: torch.ones((1, n), dtype=torch.bool)
    return Batch(
        pixel_values=torch.randn((1, T, 3, S, S), generator=g), frame_mask=ones(T),
        prefix_ids=ids(s.prefix), prefix_mask=ones(s.prefix), prefix_targets=~ones(s.prefix),
        suffix_ids=ids(s.suffix), suffix_mask=ones(s.suffix), suffix_targets=~ones(s.suffix),
    ).to(device, dtype)


def smolvlm_inputs(s: Shapes, T: int, device: str, dtype: torch.dtype, g: torch.Generator) -> dict:
    """input_ids as SmolVLM2's video prompt lays them out (intro, per frame: its timestamp text,
    <fake><global-img><image>*k<fake>, then the question), pixel_values [1, T, 3, S, S]."""
    text = lambda n: torch.randint(100, 49000, (n,), generator=g).tolist()
    frame = [FAKE, GLOBAL] + [IMAGE] * smolvlm_tokens_per_frame(s) + [FAKE]
    frames = [tok for _ in range(T) for tok in text(s.frame_text) + frame]
    ids = text(s.prefix // 2) + frames + text(s.prefix - s.prefix // 2 + s.suffix)
    S = s.siglip["image_size"]
    return {
        "input_ids": torch.tensor([ids], device=device),
        "attention_mask": torch.ones((1, len(ids)), dtype=torch.long, device=device),
        "pixel_values": torch.randn((1, T, 3, S, S), generator=g).to(device, dtype),
    }


def cache_kwarg(module: torch.nn.Module) -> str:
    """transformers renamed the forward's KV-cache argument (past_key_values -> cache) in 5.2x."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


# ---- measurements -------------------------------------------------------------------------------
def fvlm_ttft(model, batch: Batch, mode: str, engine: Engine | None):
    """The call TTFT measures: prompt + frames -> logits of the first token (a Prefill), on `engine`
    (None: the reference path)."""
    if engine is not None:
        return engine.prefill(batch, mode)
    return model.prefill(batch, mode, return_attention=False, fast=False)


def smolvlm_ttft(model, inputs: dict, cache=None):
    kw = {cache_kwarg(model): cache} if cache is not None else {}
    return model(**inputs, use_cache=True, logits_to_keep=1, **kw).logits[:, -1]


def eager_step_ms(model, batch: Batch, device: str) -> float:
    """Median gap between successive frames of the eager (DynamicCache) autoregressive loop."""
    cache = model.encode_frames(batch)
    stamps: list[float] = []

    def on_step(t: int, real: torch.Tensor, probs: torch.Tensor | None) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    for _ in range(2):  # the first run warms up
        stamps.clear()
        model.read_frames_autoregressive(batch, cache, on_step=on_step)
    return statistics.median(b - a for a, b in itertools.pairwise(stamps)) * 1e3


def fast_step_ms(engine: Engine, batch: Batch, device: str, repeat: int) -> float:
    """The engine's frame loop (one graph replay per frame on CUDA), timed as a whole / frames."""
    cache = engine.model.encode_frames(batch)
    T = batch.frame_mask.shape[1]
    flags = torch.ones((2, 1), dtype=torch.bool, device=device)
    fc = engine.acquire(1, T + DECODE_ROOM)
    times = []
    for i in range(repeat + 1):  # the first pass captures / compiles
        fc.state.reset()
        sync(device)
        start = time.perf_counter()
        for t in range(T):
            engine.frame(fc.state, cache, [t], flags, False)
        sync(device)
        if i:
            times.append((time.perf_counter() - start) * 1e3 / T)
    return statistics.median(times)


def decode_tok_s(step, first: torch.Tensor, n: int, device: str) -> float:
    """Greedy tokens/s: step(next_ids [B]) -> logits [B, V], n times, timed as a whole."""
    nxt = first.argmax(-1)
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        nxt = step(nxt).argmax(-1)
    sync(device)
    return n / (time.perf_counter() - start)


def fvlm_decode(model, batch: Batch, engine: Engine | None, n: int, device: str) -> float:
    """Decode tokens/s after an autoregressive prefill; the first round warms up (graph capture)."""
    lm = model.llm.get_output_embeddings()
    for _ in range(2):
        pre = fvlm_ttft(model, batch, "autoregressive", engine)

        def step(ids: torch.Tensor, pre=pre) -> torch.Tensor:
            return lm(pre.cache.append(model.embed(ids[:, None]))[:, -1])

        tok_s = decode_tok_s(step, pre.logits, n, device)
    return tok_s


def smolvlm_decode(model, inputs: dict, n: int, device: str) -> float:
    """The same for the SmolVLM2-shaped model (transformers, DynamicCache); the first round warms up."""
    from transformers import DynamicCache

    for _ in range(2):
        cache = DynamicCache(config=model.config.text_config)
        first = smolvlm_ttft(model, inputs, cache)
        mask = inputs["attention_mask"]

        def step(ids: torch.Tensor, cache=cache) -> torch.Tensor:
            nonlocal mask
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            kw = {cache_kwarg(model): cache}
            return model(input_ids=ids[:, None], attention_mask=mask, use_cache=True, logits_to_keep=1,
                         **kw).logits[:, -1]

        tok_s = decode_tok_s(step, first, n, device)
    return tok_s


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float | bool]:
    """How close fast logits a are to eager logits b: relative L2 error, and the same argmax."""
    a, b = a.float(), b.float()
    return {"rel_err": float((a - b).norm() / b.norm()), "same_argmax": bool((a.argmax(-1) == b.argmax(-1)).all())}


def step_parts(model, batch: Batch, device: str, engines: dict[str, Engine | None], repeat: int
               ) -> dict[str, float]:
    """The frame step's two halves alone (ms): the deep query over one frame's K/V, and one LLM token
    (eager: transformers with a DynamicCache; else the engine). engines: name -> engine (None: eager)."""
    kv = model.encode_frames(batch).select(torch.zeros(1, dtype=torch.long, device=device)).kv
    q = model.llm_to_query(model.embed(batch.prefix_ids[:, -1]))  # [1, qd]
    query = lambda: model.encoder.query_attend(q, PatchCache(kv=kv))
    out = {"query_eager_ms": time_ms(query, device, 3, repeat)}
    if device == "cuda":
        g = Graph(query, {}, None)
        out["query_graph_ms"] = time_ms(g.replay, device, 3, repeat)
    x = model.embed(batch.suffix_ids[:, -1:])  # [1, 1, d]
    for name, engine in engines.items():
        pre = fvlm_ttft(model, batch, "coarse_only", engine)  # a cache holding a short prompt

        def token(pre=pre) -> torch.Tensor:  # one more token into the cache
            return pre.cache.append(x)

        out[f"llm_token_{name}_ms"] = time_ms(token, device, 3, repeat)
    return {k: round(v, 3) for k, v in out.items()}


# ---- the run ------------------------------------------------------------------------------------
def measure(name: str, fn, model, path: str | None, per_frame: int, T: int, ctx: dict) -> dict:
    """One table row: TTFT, memory (+ step and decode speed where they apply)."""
    device, fv, engine = ctx["device"], ctx["fvlm"], ctx["engines"].get(path)
    release(ctx["engines"])  # so "held" counts the engine's slots and graphs
    held = allocated_mib(device)
    slow = "autoregressive eager" in name  # ~29 ms per frame on an H100: fewer runs
    ms = time_ms(fn, device, 1 if slow else ctx["warmup"], 3 if slow else ctx["repeat"])
    held = allocated_mib(device) - held
    row = {"frames": T, "method": name, "visual_tokens": per_frame * T, "ttft_ms": round(ms, 2),
           **memory_mib(fn, device), "held_MiB": round(held, 1) if path not in (None, "off") else 0.0}
    if name.startswith("fVLM autoregressive"):
        batch = ctx["batch"]
        row["step_ms"] = round(eager_step_ms(fv, batch, device) if engine is None
                               else fast_step_ms(engine, batch, device, repeat=3), 3)
        row["decode_tok_s"] = round(fvlm_decode(fv, batch, engine, ctx["decode_tokens"], device), 1)
    if name.startswith("SmolVLM"):
        row["decode_tok_s"] = round(smolvlm_decode(model, ctx["inputs"], ctx["decode_tokens"], device), 1)
    return row


def run(device: str, frames: list[int], shapes: str, compile_: bool, decode_tokens: int) -> dict:
    s = SHAPES[shapes]
    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator().manual_seed(0)
    fv, b1, smol = (build_fvlm(s, "foveated", device, dtype), build_fvlm(s, "multi_token", device, dtype),
                    build_smolvlm(s, device, dtype))
    weights = {k: round(sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20, 1)
               for k, m in (("fvlm", fv), ("b1", b1), ("smolvlm", smol))}
    paths = ["off", "graph"] + (["compile"] if compile_ else [])
    label = {"off": "eager", "graph": "fast" if cuda else "fast (static cache, no graphs on CPU)",
             "compile": "compiled"}
    engines = {"off": None, "graph": Engine(fv), **({"compile": Engine(fv, compile=True)} if compile_ else {})}
    ctx = {"device": device, "fvlm": fv, "decode_tokens": decode_tokens, "engines": engines,
           "warmup": 3 if cuda else 1, "repeat": 10 if cuda else 3}
    rows, checks, failed = [], {}, set()
    fvlm_paths = [(mode, path) for mode in ("coarse_fine", "autoregressive") for path in paths
                  if path != "compile" or mode == "autoregressive"]  # compile serves the steps only
    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if not cuda:
            say("e2e: timing one call of each model at 1 and 4 frames to estimate the run ...")
            eta = estimate_s(s, frames, device, dtype, ctx, (smol, b1, fv), fvlm_paths)
            say(f"e2e: this run will take roughly {format_seconds(eta)} (h:mm:ss; each model timed at 1 "
                "and 4 frames, scaled to the frames and calls of every row)")
        bar = Progress(len(frames) * (2 + len(fvlm_paths)), f"e2e ({shapes} shapes)", unit="rows")
        for T in frames:
            batch = ctx["batch"] = fvlm_batch(s, T, device, dtype, g)
            inputs = ctx["inputs"] = smolvlm_inputs(s, T, device, dtype, g)
            methods = [("SmolVLM2-256M-shaped", lambda inputs=inputs: smolvlm_ttft(smol, inputs), smol, None,
                        smolvlm_tokens_per_frame(s)),
                       ("B1 (16 tokens/frame)", lambda batch=batch: b1.prefill(batch, "coarse_only", False), b1,
                        None, 16)]
            methods += [(f"fVLM {mode} {label[path]}",
                         lambda mode=mode, path=path, batch=batch: fvlm_ttft(fv, batch, mode, engines[path]), fv,
                         path, 1)
                        for mode, path in fvlm_paths]
            for name, fn, model, path, per_frame in methods:
                if path in failed:
                    bar.update(1)
                    continue
                bar.write(f"e2e: {T} frames, {name} ...")
                try:
                    row = measure(name, fn, model, path, per_frame, T, ctx)
                except Exception as e:  # torch.compile is optional: report its failure, measure the rest
                    if path != "compile":
                        raise
                    failed.add(path)
                    row = {"frames": T, "method": name, "error": f"{type(e).__name__}: {e}"[:2000]}
                rows.append(row)
                bar.write(json.dumps(row), sys.stdout)
                bar.update(1)
            if T == frames[0]:  # fast vs eager on the same inputs
                for mode in ("coarse_fine", "autoregressive"):
                    ref = fvlm_ttft(fv, batch, mode, None).logits
                    for path in paths[1:]:
                        if path not in failed and (path != "compile" or mode == "autoregressive"):
                            checks[f"{mode} {label[path]} vs eager"] = agreement(
                                fvlm_ttft(fv, batch, mode, engines[path]).logits, ref)
            release(engines)
        bar.close()
        say("e2e: the frame step's parts (query path, LLM token), eager and engine ...")
        parts = step_parts(fv, batch, device, {label[p].split()[0]: engines[p] for p in paths if p not in failed},
                           ctx["repeat"])
        release(engines)
    notes = sorted({str(w.message)[:500] for w in caught if "fvlm" in w.filename})
    return {
        "benchmark": "e2e", "shapes": shapes, "label": s.label, "standins": shapes != "full",
        "machine": machine(device), "dtype": str(dtype).removeprefix("torch."), "batch_size": 1,
        "weights_MiB": weights, "frames": frames, "rows": rows, "step_parts_ms": parts,
        "fast_vs_eager": checks, "warnings": notes, "ratios": ratios(rows, max(frames)), "targets": TARGETS,
    }


def estimate_s(s: Shapes, frames: list[int], device: str, dtype: torch.dtype, ctx: dict, models: tuple,
               fvlm_paths: list[tuple[str, str]]) -> float:
    """Seconds the run will take, roughly: each model's call (eager) timed at 1 and 4 frames, a line
    through the two (fixed cost + cost per frame), times the calls each row makes (warm-up,
    repeats, memory; + 2 prefills for decoding, + 4 for the autoregressive step and decoding)."""
    smol, b1, fv = models
    g = torch.Generator().manual_seed(1)

    def seconds(T: int) -> torch.Tensor:  # [4] one call of SmolVLM, B1, fVLM coarse_fine, autoregressive
        batch, inputs = fvlm_batch(s, T, device, dtype, g), smolvlm_inputs(s, T, device, dtype, g)
        return torch.tensor([time_ms(fn, device, 1, 1) / 1e3 for fn in (
            lambda: smolvlm_ttft(smol, inputs), lambda: b1.prefill(batch, "coarse_only", False),
            lambda: fvlm_ttft(fv, batch, "coarse_fine", None),
            lambda: fvlm_ttft(fv, batch, "autoregressive", None))])

    at1, at4 = seconds(1), seconds(4)
    per_frame = ((at4 - at1) / 3).clamp(min=0)
    n = ctx["warmup"] + ctx["repeat"] + 1
    rows = [sum(mode == m for mode, _ in fvlm_paths) for m in ("coarse_fine", "autoregressive")]
    calls = torch.tensor([n + 2.0, n, n * rows[0], (n + 4) * rows[1]])
    return float(sum((calls * (at1 + per_frame * (T - 1))).sum() for T in frames))


def release(engines: dict[str, Engine | None]) -> None:
    """Free every engine's static slots and graphs."""
    for e in engines.values():
        if e is not None:
            e.release()


def ratios(rows: list[dict], T: int) -> dict[str, float | None]:
    """fVLM / SmolVLM2-shaped at T frames (the engine where measured), and engine / eager."""
    at = {r["method"]: r for r in rows if r["frames"] == T and "error" not in r}
    ref = at["SmolVLM2-256M-shaped"]

    def best(mode: str, key: str) -> dict | None:
        cands = [r for m, r in at.items() if m.startswith(f"fVLM {mode}") and "eager" not in m]
        return min(cands, key=lambda r: r[key]) if cands else None

    out: dict[str, float | None] = {}
    for mode in ("coarse_fine", "autoregressive"):
        eager, quick = at[f"fVLM {mode} eager"], best(mode, "ttft_ms")
        out[f"ttft_{mode}_eager"] = round(eager["ttft_ms"] / ref["ttft_ms"], 3)
        out[f"ttft_{mode}"] = round(quick["ttft_ms"] / ref["ttft_ms"], 3) if quick else None
        out[f"transient_memory_{mode}_eager"] = round(eager["transient_MiB"] / max(ref["transient_MiB"], 1e-9), 3)
        if quick:
            out[f"transient_memory_{mode}"] = round(quick["transient_MiB"] / max(ref["transient_MiB"], 1e-9), 3)
            out[f"engine_vs_eager_ttft_{mode}"] = round(quick["ttft_ms"] / eager["ttft_ms"], 3)
    out["step_ms_eager"] = at["fVLM autoregressive eager"]["step_ms"]
    step = best("autoregressive", "step_ms")
    out["step_ms"] = step["step_ms"] if step else None
    if step:
        out["engine_vs_eager_step"] = round(step["step_ms"] / out["step_ms_eager"], 3)
    return out


def table(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# fVLM end to end on {m['device']}", "",
        (f"{result['label']}. Batch {result['batch_size']}, {result['dtype']}, random weights; "
         f"{m['date']}, torch {m['torch']}, transformers {m['transformers']}, {m['cpu_count']} CPUs "
         f"(load {m['load_avg_1min']}). Weights (MiB): {result['weights_MiB']}."), "",
        ("TTFT: decoded pixels on the device -> first token's logits. step: one autoregressive frame "
         "(deep query + one LLM token). transient: peak minus before the call; held: the engine's "
         "static KV slots and CUDA-graph pools, kept between calls."), "",
    ]
    header = ["frames", "method", "visual tokens", "TTFT ms", "step ms", "decode tok/s", "peak MiB",
              "transient MiB", "held MiB"]
    body = [[r["frames"], r["method"], r["visual_tokens"], r["ttft_ms"], r.get("step_ms", ""),
             r.get("decode_tok_s", ""), r["peak_MiB"], r["transient_MiB"], r["held_MiB"]] if "error" not in r
            else [r["frames"], r["method"], "failed: " + r["error"][:200]] + [""] * 6 for r in result["rows"]]
    lines.append(markdown_table(header, body))
    T = max(result["frames"])
    lines.append(f"Ratios at {T} frames, fVLM / SmolVLM2-shaped and engine / eager (engine_vs_eager_*; "
                 "target in brackets where one is set):\n")
    for k, v in result["ratios"].items():
        lines.append(f"- {k}: {v}" + (f" [<= {TARGETS[k]}]" if k in TARGETS else ""))
    lines.append("\nThe frame step's halves alone (ms; eager: transformers + DynamicCache; fast, compiled: "
                 "fvlm.engine, replayed from CUDA graphs on CUDA): "
                 + ", ".join(f"{k.removesuffix('_ms')} {v}" for k, v in result["step_parts_ms"].items()))
    for w in result["warnings"]:
        lines.append(f"\nwarning: {w}")
    lines.append("\nEngine vs eager (same inputs, logits of the first token): "
                 + "; ".join(f"{k}: rel err {v['rel_err']:.2e}, same argmax {v['same_argmax']}"
                             for k, v in result["fast_vs_eager"].items()))
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    frames = result["frames"]
    get = lambda key: {m: [next((r[key] for r in result["rows"] if r["method"] == m and r["frames"] == T), None)
                           for T in frames] for m in methods}
    m = result["machine"]
    line_chart(path, f"fVLM vs SmolVLM2-shaped on {m['device']} ({result['dtype']}, batch 1, {m['date'][:10]})"
               + (" - stand-ins" if result["standins"] else ""), [
        {"title": "time to first token", "ylabel": "ms", "x": frames, "series": get("ttft_ms")},
        {"title": "transient memory (peak - before)", "ylabel": "MiB", "x": frames, "series": get("transient_MiB")},
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", default="8,16,32,64", help="comma-separated frame counts")
    parser.add_argument("--out", type=Path, help="write e2e.md, e2e.json and e2e.png into this folder")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins: checks that it runs")
    parser.add_argument("--full", action="store_true",
                        help="full-size models on CPU too (hours; the run prints an estimate first)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip the torch.compile variant (on by default on CUDA, off on CPU)")
    parser.add_argument("--decode-tokens", type=int, default=None, help="tokens per decode timing")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu for the stand-ins)")
    shapes = "smoke" if args.smoke else "full" if args.device == "cuda" or args.full else "cpu"
    frames = [int(f) for f in args.frames.split(",")]
    decode_tokens = args.decode_tokens or {"full": 32, "cpu": 16, "smoke": 4}[shapes]
    compile_ = args.compile and args.device == "cuda"
    setup(args.device)
    say(f"e2e: building the {SHAPES[shapes].label} models on {args.device}; frames {frames}")
    result = run(args.device, frames, shapes, compile_, decode_tokens)
    text = table(result)
    print(text)
    write_outputs(args.out, "e2e", result, text)
    if args.out:
        plot(result, args.out / "e2e.png")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
