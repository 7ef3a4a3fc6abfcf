"""FoveatedVLM: one visual token per frame, and the LLM decides where the next frame looks.

Modes (chosen per call):
- coarse_only:    every frame is read with the static query q_static; one LLM pass.
- coarse_fine:    (training) a coarse pass as above, through the LLM over prefix + visual tokens;
                  frame t's query = llm_to_query(hidden state just before frame t's slot)
                  (frame 0 in video_first: q_init); a fine pass re-reads every frame with its own
                  query in one batched call; the LLM reads [prefix, fine tokens, suffix].
- autoregressive: frame by frame with the LLM KV cache; frame t's query comes from the fine
                  hidden state before its slot; then the suffix; generation continues from the cache.
Parameter names match the published fVLM-135M checkpoint (encoder.dino.*, encoder.query_input_proj,
encoder.output_proj, dino_to_llm, llm_to_query, q_static, q_init, llm.*).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from .batch import Batch
from .config import FVLMConfig
from .encoder import FoveatedEncoder, PatchCache
from .engine import Engine
from .errors import InputError
from .gaze import GazeEmbedding, gaze_features, previous_centres, with_moves
from .live import LiveConfig, LiveSession
from .sequence import LLMInput, assemble, positions
from .vlm import LLMCache, Prefill, VLMBase, VLMOutput, hf_config


class FrameTokens(NamedTuple):
    """What FoveatedVLM.frame_tokens makes of n queries, one per frame."""

    emb: torch.Tensor  # [n, d_llm] what the LLM reads
    z: torch.Tensor  # [n, D] the visual tokens before the projection into the LLM
    probs: torch.Tensor | None  # [n, L, H, N] the query's attention, when asked for
    gaze: torch.Tensor | None  # [n, 2] where it looked (centre x, y), with config.gaze_embedding


class FoveatedVLM(VLMBase):
    def __init__(self, config: FVLMConfig, tokenizer=None):
        super().__init__(config, tokenizer)
        vision = hf_config(config.vision)
        d_llm = self.llm.config.hidden_size
        self.encoder = FoveatedEncoder(vision, config.query_dim, deep_query=config.deep_query)
        self.dino_to_llm = nn.Linear(vision.hidden_size, d_llm)
        self.llm_to_query = nn.Linear(d_llm, config.query_dim)
        self.q_static = nn.Parameter(torch.randn(1, config.query_dim))  # std 1: foveation needs it
        self.q_init = nn.Parameter(torch.randn(1, config.query_dim))
        self.gaze_embed = GazeEmbedding(d_llm) if config.gaze_embedding else None
        self._engine: Engine | None = None

    @property
    def vision_model(self) -> nn.Module:
        return self.encoder.dino

    # ---- the inference engine (fvlm/engine.py) --------------------------------------------------
    @property
    def engine(self) -> Engine:
        """This model's inference engine: built on first use, and rebuilt with the same options when
        the weights moved (.to(), .double(), new parameters). Assign one to choose options, e.g.
        `model.engine = Engine(model, compile=True)`."""
        if self._engine is None or self._engine.stale(self):
            self._engine = Engine(self, **(self._engine.options if self._engine else {}))
        return self._engine

    @engine.setter
    def engine(self, engine: Engine) -> None:
        if engine.model is not self:
            raise InputError("model.engine: this Engine was built for another model")
        self._engine = engine

    def __getstate__(self) -> dict:
        """Copies (copy.deepcopy) and pickles start without an engine: its slots and graphs are this model's."""
        return {**super().__getstate__(), "_engine": None}

    # ---- building blocks ----------------------------------------------------------------------
    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Visual token z [.., D] -> LLM embedding [.., d_llm]."""
        return self.dino_to_llm(z) * self.config.visual_scale

    def encode_frames(self, batch: Batch) -> PatchCache:
        """DINO patch pass over the real frames only (row-major over [B, T])."""
        return self.encoder.encode_patches(batch.pixel_values[batch.frame_mask])

    def scatter_frames(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """[n_real, ...] -> [B, T, ...] with zeros at padded frames."""
        out = x.new_zeros((*frame_mask.shape, *x.shape[1:]))
        out[frame_mask] = x
        return out

    def frame_tokens(self, queries: torch.Tensor, cache: PatchCache, return_attention: bool,
                     backend: str | None = None, prev_gaze: torch.Tensor | None = None,
                     first: torch.Tensor | None = None) -> FrameTokens:
        """The one place a query becomes what the LLM reads. queries [n, qd], one per frame of `cache`
        -> FrameTokens (LLM embeddings [n, d_llm], tokens z [n, D], attention probs [n, L, H, N] if
        asked, the gaze centre [n, 2] with config.gaze_embedding).

        With config.gaze_embedding the embedding also says where the query looked and how far that
        moved since the clip's previous frame (fvlm/gaze.py), which needs that frame's centre: rows
        that are one frame each pass prev_gaze [n, 2] (the previous call's FrameTokens.gaze, NaN or
        None where there is no previous frame); rows that are whole clips in order pass first [n]
        bool (True at each clip's first frame)."""
        gaze = self.gaze_embed is not None
        z, probs = self.encoder.query_attend(queries, cache, return_attention or gaze, backend=backend)
        emb, centre = self.project(z), None
        if gaze:
            where = gaze_features(probs, self.config.layer_index(probs.shape[1]),
                                  self.encoder.grid(self.config.image_size))  # [n, 4]
            if first is not None:
                prev_gaze = previous_centres(where, first)
            emb = emb + self.gaze_embed(with_moves(where, prev_gaze).to(emb.dtype))
            centre = where[:, :2]
        return FrameTokens(emb, z, probs if return_attention else None, centre)

    def visual_embeddings(self, queries: torch.Tensor, cache: PatchCache, frame_mask: torch.Tensor,
                return_attention: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """queries [n_real, qd], one per real frame (row-major over [B, T]) -> visual embeddings
        [B, T, d_llm] (+ probs [n_real, L, H, N]), and the tokens z [n_real, D] they were projected from."""
        first = (frame_mask.long().cumsum(1) == 1) & frame_mask  # [B, T] each clip's first real frame
        out = self.frame_tokens(queries, cache, return_attention, first=first[frame_mask])
        return self.scatter_frames(out.emb, frame_mask), out.probs, out.z

    def static_queries(self, n: int) -> torch.Tensor:
        return self.q_static.expand(n, -1)

    def llm_input(self, batch: Batch, visual: torch.Tensor, with_suffix: bool = True) -> LLMInput:
        suffix = [batch.suffix_ids, batch.suffix_mask, batch.suffix_targets]
        if not with_suffix:
            suffix = [t[:, :0] for t in suffix]
        return assemble(
            self.embed, batch.prefix_ids, batch.prefix_mask, batch.prefix_targets,
            visual, batch.frame_mask, *suffix,
        )

    def fine_queries(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Queries [B, T, qd] from the hidden states [B, P+T(+S), d] of a pass over the visual block.

        Frame t reads the hidden state of the slot before it: frame t-1's, or for frame 0 the last
        prefix token (text_first); with no prefix (video_first) frame 0 uses q_init.
        """
        P, T = batch.prefix_ids.shape[1], batch.frame_mask.shape[1]
        before = torch.cat([hidden.new_zeros(hidden.shape[0], 1, hidden.shape[2]), hidden], 1)
        q = self.llm_to_query(before[:, P : P + T])  # [B, T, qd]
        has_prefix = batch.prefix_mask[:, -1] if P > 0 else torch.zeros_like(batch.frame_mask[:, 0])
        q0 = torch.where(has_prefix[:, None], q[:, 0], self.q_init.to(q.dtype))
        return torch.cat([q0[:, None], q[:, 1:]], dim=1)

    # ---- training / scoring forward -----------------------------------------------------------
    def forward(
        self,
        batch: Batch,
        mode: str = "coarse_fine",
        *,
        measure_coarse: bool = False,
        return_attention: bool = False,
        return_hidden: bool = False,
        return_tokens: bool = False,
        return_features: bool = False,
    ) -> VLMOutput:
        """Text loss of `batch` under `mode` (see the module docstring), and on request what the
        pass computed on the way (None where not asked, and where there are no frames):

        measure_coarse:   in coarse_fine, also the static-query (coarse) loss in out.coarse; it is
                          always computed when config.lambda_coarse > 0 and then added to out.loss.
        return_attention: out.attention [n_real, L, H, N] (+ out.coarse_attention in coarse_fine).
        return_hidden:    out.hidden [B, L, d_llm] final hidden states and out.labels [B, L].
        return_tokens:    out.tokens [n_real, D], the mode's visual tokens z before the projection
                          into the LLM (row-major over [B, T]), e.g. for a loss or a probe of what
                          a token carries.
        return_features:  out.features [n_real, N, D], DINO's final patch features (CLS first).
        """
        self.check_mode(mode)
        fm = batch.frame_mask
        cache = None
        if not bool(fm.any()):  # text only: no visual tokens, every mode is the same LLM pass
            visual = self.q_static.new_zeros(*fm.shape, self.llm.config.hidden_size)
            inp = self.llm_input(batch, visual)
            hidden = self.decoder(inp.embeds, inp.mask, inp.position_ids)
            out = VLMOutput(loss=None, text=self.loss(hidden, inp.labels))
            out.loss = out.text.loss
            if mode == "coarse_fine" and (measure_coarse or self.config.lambda_coarse > 0):
                out.coarse = out.text
                out.loss = out.loss + self.config.lambda_coarse * out.coarse.loss
        elif mode == "autoregressive":
            cache = self.encode_frames(batch)
            run = self.read_frames_autoregressive(batch, cache, return_attention=return_attention)
            hidden, inp, probs = run["hidden"], run["input"], run["attention"]
            out = VLMOutput(loss=None, text=self.loss(hidden, inp.labels), attention=probs, tokens=run["tokens"])
            out.loss = out.text.loss
        else:
            cache = self.encode_frames(batch)
            static = self.static_queries(cache.num_frames)
            vis_c, probs_c, z_c = self.visual_embeddings(static, cache, fm, return_attention)
            inp_c = self.llm_input(batch, vis_c, with_suffix=(mode == "coarse_only" or measure_coarse
                                                            or self.config.lambda_coarse > 0))
            hidden_c = self.decoder(inp_c.embeds, inp_c.mask, inp_c.position_ids)
            if mode == "coarse_only":
                hidden, inp, probs = hidden_c, inp_c, probs_c
                out = VLMOutput(loss=None, text=self.loss(hidden, inp.labels), attention=probs, tokens=z_c)
                out.loss = out.text.loss
            else:
                queries = self.fine_queries(hidden_c, batch)[fm]  # [n_real, qd]
                vis_f, probs, z_f = self.visual_embeddings(queries, cache, fm, return_attention)
                inp = self.llm_input(batch, vis_f)
                hidden = self.decoder(inp.embeds, inp.mask, inp.position_ids)
                out = VLMOutput(loss=None, text=self.loss(hidden, inp.labels), attention=probs,
                                coarse_attention=probs_c, tokens=z_f)
                out.loss = out.text.loss
                if inp_c.labels.shape[1] == inp.labels.shape[1]:  # the coarse pass saw the suffix
                    out.coarse = self.loss(hidden_c, inp_c.labels)
                    if self.config.lambda_coarse > 0:
                        out.loss = out.loss + self.config.lambda_coarse * out.coarse.loss
        if return_hidden:
            out.hidden, out.labels = hidden, inp.labels
        if not return_tokens:
            out.tokens = None
        if return_features and cache is not None:
            out.features = cache.features
        return out

    def read_frames_autoregressive(
        self, batch: Batch, cache: PatchCache, return_attention: bool = False, use_cache: bool = True,
        on_step: Callable[[int, torch.Tensor, torch.Tensor | None], None] | None = None,
    ) -> dict:
        """Read the frames one by one, each with the query made from the previous slot's hidden state.

        use_cache=False recomputes the whole sequence at every step instead of using the LLM KV
        cache: the plain reference the cached path is tested against. on_step(t, real [B], probs)
        is called after each frame (live display).
        Returns hidden [B, L, d], the LLMInput, attention probs [n_real, L, H, N] and the cache.
        """
        B, T = batch.frame_mask.shape
        fm = batch.frame_mask
        row = (fm.flatten().long().cumsum(0) - 1).view(B, T)  # frame (b, t) -> cache row
        kv = self.new_cache() if use_cache else None
        hiddens, tokens, probs, zs = [], [], [], []
        last = None  # [B, d] hidden state of the slot before the next frame
        centre = torch.full((B, 2), float("nan"), device=fm.device)  # [B, 2] each row's last gaze centre
        if batch.prefix_ids.shape[1] > 0:
            emb = self.embed(batch.prefix_ids) * batch.prefix_mask[..., None]
            hiddens.append(self.decoder(emb, batch.prefix_mask, positions(batch.prefix_mask), kv))
            last = hiddens[-1][:, -1]
        for t in range(T):
            real = fm[:, t]  # [B]
            q = self.q_init.expand(B, -1)
            if last is not None:
                has_prev = batch.prefix_mask[:, -1] if t == 0 else fm[:, t - 1]
                q = torch.where(has_prev[:, None], self.llm_to_query(last), q)
            emb, z, p, c = self.frame_tokens(q[real], cache.select(row[real, t]), return_attention,
                                             prev_gaze=centre[real])
            if c is not None:
                centre = centre.to(c).index_put((real,), c)
            tokens.append(self.scatter_frames(emb, real))  # [B, d]
            probs.append(p)
            zs.append(z)
            visual = torch.stack(tokens, dim=1)  # [B, t+1, d]
            if use_cache:
                mask = torch.cat([batch.prefix_mask, fm[:, : t + 1]], dim=1)
                h = self.decoder(visual[:, -1:], mask, positions(mask)[:, -1:], kv)
            else:
                inp = self.llm_input(_truncate(batch, t + 1), visual, with_suffix=False)
                h = self.decoder(inp.embeds, inp.mask, inp.position_ids)[:, -1:]
            hiddens.append(h)
            last = h[:, 0]
            if on_step is not None:
                on_step(t, real, p)

        d_llm = self.llm.config.hidden_size
        visual = torch.stack(tokens, dim=1) if tokens else self.q_init.new_zeros(B, 0, d_llm)
        inp = self.llm_input(batch, visual)
        S = batch.suffix_ids.shape[1]
        if not use_cache:
            hidden = self.decoder(inp.embeds, inp.mask, inp.position_ids)
        else:
            if S > 0:
                hiddens.append(self.decoder(inp.embeds[:, -S:], inp.mask, inp.position_ids[:, -S:], kv))
            hidden = torch.cat(hiddens, dim=1)
        attention = z_rows = None
        if T > 0:
            order = torch.cat([row[fm[:, t], t] for t in range(T)])  # step order -> cache rows
            z_rows = torch.empty_like(torch.cat(zs))  # [n_real, D] in row-major frame order
            z_rows[order] = torch.cat(zs)
            if return_attention:
                attention = torch.empty_like(torch.cat(probs))
                attention[order] = torch.cat(probs)
        return {"hidden": hidden, "input": inp, "attention": attention, "cache": kv, "tokens": z_rows}

    # ---- live video ---------------------------------------------------------------------------
    def live(self, prompt: str, max_frames: int | None = None, keep_frames: int | None = None,
             max_new_tokens: int = 64) -> LiveSession:
        """A live session (fvlm/live.py): push frames one at a time, ask for an answer at any moment.
        max_frames: the window of visual tokens (default config.max_frames); keep_frames: how many
        stay when it slides (default max_frames // 2). See docs/live.md for the window policy."""
        W = self.config.max_frames if max_frames is None else max_frames
        keep = W // 2 if keep_frames is None else keep_frames
        return LiveSession(self, prompt, LiveConfig(W, keep, max_new_tokens))

    # ---- generation ---------------------------------------------------------------------------
    def prefill(self, batch: Batch, mode: str, return_attention: bool,
                 on_step: Callable | None = None, fast: bool | None = None) -> Prefill:
        """VLMBase.prefill: on the engine when asked for (use_engine) and it serves this batch, else the
        reference path (transformers' DynamicCache)."""
        self.check_mode(mode)
        if self.use_engine(fast) and self.engine.serves(batch):  # static KV cache + CUDA graphs
            return self.engine.prefill(batch, mode, return_attention, on_step)
        cache = self.encode_frames(batch)
        if mode == "autoregressive":
            run = self.read_frames_autoregressive(batch, cache, return_attention, on_step=on_step)
            inp = run["input"]
            return Prefill(
                cache=LLMCache(self, run["cache"], inp.mask, inp.mask.sum(1)), mask=inp.mask,
                next_position=inp.mask.sum(1),
                logits=self.llm.get_output_embeddings()(run["hidden"][:, -1]),
                attention=run["attention"],
            )
        inp, probs, coarse = self.read_frames_coarse(
            batch, cache, mode, return_attention, lambda i: self.decoder(i.embeds, i.mask, i.position_ids))
        pre = self.full_prefill(batch, inp)
        pre.attention, pre.coarse_attention = probs, coarse
        return pre

    def read_frames_coarse(
        self, batch: Batch, cache: PatchCache, mode: str, return_attention: bool,
        llm_pass: Callable[[LLMInput], torch.Tensor],
    ) -> tuple[LLMInput, torch.Tensor | None, torch.Tensor | None]:
        """coarse_only / coarse_fine generation up to the LLM's whole input: (input, attention probs
        [n_real, L, H, N] of the tokens in it, the coarse pass's probs in coarse_fine else None).
        llm_pass(inp) -> final hidden states [B, L, d] of one LLM pass that keeps no cache (the coarse
        pass over [prefix, coarse tokens]); the reference path and the engine each bring their own."""
        fm = batch.frame_mask
        vis_c, probs_c, _ = self.visual_embeddings(self.static_queries(cache.num_frames), cache, fm, return_attention)
        if mode == "coarse_only":
            return self.llm_input(batch, vis_c), probs_c, None
        hidden_c = llm_pass(self.llm_input(batch, vis_c, with_suffix=False))
        vis_f, probs_f, _ = self.visual_embeddings(self.fine_queries(hidden_c, batch)[fm], cache, fm, return_attention)
        return self.llm_input(batch, vis_f), probs_f, probs_c

    def attention_summary(self, probs: torch.Tensor) -> dict[str, np.ndarray]:
        """probs [n, L, H, N] -> per frame: `attention` [n, gh, gw] (the config.attention_map
        aggregate, CLS dropped, sums to 1), `layer_attention` [n, L, gh, gw] (head mean per layer)
        and `entropy` [n] (nats over all N keys, head mean, of the same layer/aggregate)."""
        gh, gw = self.encoder.grid(self.config.image_size)
        layer = self.config.layer_index(probs.shape[1])
        probs = probs.float()
        ent = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean(-1)  # [n, L]
        layers = probs.mean(2)[..., 1:]  # [n, L, gh*gw]
        layers = layers / layers.sum(-1, keepdim=True).clamp_min(1e-12)
        shown = layers.mean(1) if layer is None else layers[:, layer]
        shown = shown / shown.sum(-1, keepdim=True).clamp_min(1e-12)
        n = probs.shape[0]
        return {
            "attention": shown.reshape(n, gh, gw).cpu().numpy(),
            "layer_attention": layers.reshape(n, -1, gh, gw).cpu().numpy(),
            "entropy": (ent.mean(1) if layer is None else ent[:, layer]).cpu().numpy(),
        }

    def attention_maps(self, pre: Prefill, batch: Batch) -> list[dict[str, np.ndarray]]:
        """Split the batch's attention summaries per sample (+ the coarse map in coarse_fine)."""
        if pre.attention is None:
            return super().attention_maps(pre, batch)
        bounds = np.cumsum([0] + batch.frame_mask.sum(1).tolist())
        fine = self.attention_summary(pre.attention)
        coarse = None if pre.coarse_attention is None else self.attention_summary(pre.coarse_attention)
        maps = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            m = {k: v[a:b] for k, v in fine.items()}
            if coarse is not None:
                m["coarse_attention"] = coarse["attention"][a:b]
            maps.append(m)
        return maps


def _truncate(batch: Batch, t: int) -> Batch:
    """The batch with only its first t frame slots (used by the no-cache reference)."""
    return Batch(
        pixel_values=batch.pixel_values[:, :t], frame_mask=batch.frame_mask[:, :t],
        prefix_ids=batch.prefix_ids, prefix_mask=batch.prefix_mask,
        prefix_targets=batch.prefix_targets, suffix_ids=batch.suffix_ids[:, :0],
        suffix_mask=batch.suffix_mask[:, :0], suffix_targets=batch.suffix_targets[:, :0],
    )
