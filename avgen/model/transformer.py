"""AVDiT: one transformer that denoises video and audio tokens together.

Tokens: prompt, video and audio; media queries read keys [prompt | own modality] (and, gated, the
other modality; see `Attention`). Per stream (prompt / video / audio):
input embedding, AdaLN-Zero modulation and FFN. Shared: the attention weights. Conditioning:
video and audio tokens are modulated by their OWN noise level (t_video, t_audio), so one network
serves text-to-AV, A2V (audio held at t = 0) and V2A; prompt tokens by a learned t-free vector.

Time: every media token carries its time in seconds and rotary position embedding (RoPE) turns
that time into a phase, so video token n and audio token n (the same instant) get the same
rotation, and attention between them depends only on their time difference. Prompt tokens get
no rotation; they carry a label embedding plus an ordinal embedding (first, second, ... event).
How many labels the prompt has (0 = null) is also added to every stream's AdaLN input (`count_cond`).

Prompt tokens attend only to the prompt and carry no noise level, time or timeline, so their
states at every block are a function of the prompt alone: `encode_prompt_states` runs that stream
once and the media stream reads its keys and values (`PromptStates`). Likewise the media streams'
AdaLN outputs depend only on each row's noise levels and label count (`modulation` -> `Modulation`).
A sampler computes both once per call, for all of its steps, not once per denoising step (the same
function either way, to rounding).

Cross-modal path (see `Attention`): within-modality attention and video<->audio attention are two
masked passes over the same q, k, v; the cross-modal output enters through a zero-initialised
gate, so at initialisation the network is exactly two single-modality models sharing a prompt,
and `cross_modal=False` (per call or per sample) closes that gate for the modality-guidance pass.

The network predicts clean tokens x0 (JiT, "Back to Basics: Let Denoising Generative Models
Denoise", Li & He 2025): 1024-dim video tokens through a 256-wide network is the bottleneck
regime where x-prediction trains and eps/v-prediction does not. It knows nothing about noise
schedules: `objective.py` and `sampler.py` call it as a function. Its embeddings, RoPE and sequence
layout are in `layers.py`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from avgen.data.clip import ClipSpec
from avgen.model.codec import AVCodec
from avgen.model.config import KEYLESS_MLP_ACTIVATION, CodecConfig, ModelConfig, model_config
from avgen.model.layers import (MEDIA, STREAMS, Layout, Modulation, PromptStates, TimestepEmbedder,  # noqa: F401
                                apply_rope, build_layout, feed_forward, modulate, rope_angles, rope_tables)


# ---------------------------------------------------------------------------- blocks
class Attention(nn.Module):
    """Shared-weight joint attention with a separately gated cross-modal pass.

    Why two passes rather than one softmax over all tokens with a learned logit bias: a softmax over
    the joint key set renormalises, so video tokens would depend on audio tokens even with a zero
    bias, and the path could not start at exactly zero or be switched off exactly. Here the first pass
    sees [prompt + own modality] (an exact single-modality model), the second sees only the other
    modality, and its output is scaled by a zero-initialised per-channel gate (and by 0 for samples
    with `cross_modal=False`). The extra pass is cheap: attention is ~10% of the FLOPs at ~100 tokens.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        # QK-norm keeps attention logits bounded (long training, bf16 on the device machine)
        self.q_norm = nn.RMSNorm(dim // num_heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim // num_heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.cross_gate = nn.ParameterDict({s: nn.Parameter(torch.zeros(dim)) for s in MEDIA})

    def project(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        """(B, L, D) -> q, k, v (B, H, L, hd): QK-normed, and rotated by `rope` (`rope_tables`, each
        (L, hd)) if given."""
        q, k, v = rearrange(self.qkv(h), "b l (three h d) -> three b h l d", three=3, h=self.num_heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        return q, k, v

    def prompt(self, h: torch.Tensor, valid: torch.Tensor, need_output: bool = True):
        """Prompt tokens (B, P, D) attend to the valid prompt tokens -> (output (B, P, D) or None, k, v)."""
        q, k, v = self.project(h)
        if not need_output:
            return None, k, v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])  # (B, H, P, hd)
        return self.proj(rearrange(out, "b h p d -> b p (h d)")), k, v

    def forward(self, h: torch.Tensor, layout: Layout, prompt_k: torch.Tensor, prompt_v: torch.Tensor) -> torch.Tensor:
        """Media tokens (B, M, D): the own pass reads [prompt + own modality], the gated cross pass the other."""
        q, k, v = self.project(h, layout.rope)  # (B, H, M, hd)
        own = F.scaled_dot_product_attention(q, torch.cat([prompt_k, k], dim=2), torch.cat([prompt_v, v], dim=2),
                                             attn_mask=layout.bias("self_mask", q.dtype))  # (B, H, M, hd)
        cross = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.bias("cross_mask", q.dtype))  # (B, H, M, hd)
        # each media token's gate (its modality's, per channel), in the heads' layout (1, H, M, hd)
        gate = torch.cat([self.cross_gate[m].expand(layout.lengths[m], -1) for m in MEDIA])  # (M, D)
        gate = rearrange(gate, "m (h d) -> h m d", h=self.num_heads)[None].to(cross.dtype)
        keep = layout.cross_keep.to(cross.dtype)[..., None]  # (B, 1, 1, 1)
        return self.proj(rearrange(torch.addcmul(own, gate * keep, cross), "b h m d -> b m (h d)"))  # (B, M, D)


class AVDiTBlock(nn.Module):
    """DiT block with AdaLN-Zero and FFNs per stream, attention shared across streams."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, activation: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ffn = nn.ModuleDict({s: feed_forward(dim, mlp_ratio, activation) for s in STREAMS})
        self.ada = nn.ModuleDict({s: nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim)) for s in STREAMS})

    def forward(self, x: dict[str, torch.Tensor], modulation: dict[str, torch.Tensor], layout: Layout,
                prompt_k: torch.Tensor, prompt_v: torch.Tensor) -> dict[str, torch.Tensor]:
        """{modality: (B, N, D)} -> {modality: (B, N, D)}, with this block's AdaLN outputs
        {modality: (B, 6D)} (see `Modulation`), reading the prompt's keys and values.
        Streams stay separate, contiguous tensors: each one's modulation broadcasts from (B, 1, D)
        instead of being expanded over its tokens, and only the attention input is concatenated (an
        A/B against the concatenated form, measured when the prompt stream still ran here: 3-10%
        faster on this CPU, identical outputs to 2e-6)."""
        mod = {s: modulation[s][:, None].chunk(6, dim=-1) for s in MEDIA}  # 6 x (B, 1, D)
        h = torch.cat([modulate(self.norm1(x[s]), *mod[s][:2]) for s in MEDIA], dim=1)  # (B, M, D)
        a = layout.split(self.attn(h, layout, prompt_k, prompt_v))  # {modality: (B, N, D)}
        return {s: self.ffn_residual(s, torch.addcmul(x[s], mod[s][2], a[s]), mod[s]) for s in MEDIA}

    def ffn_residual(self, stream: str, x: torch.Tensor, mod) -> torch.Tensor:
        return torch.addcmul(x, mod[5], self.ffn[stream](modulate(self.norm2(x), *mod[3:5])))

    def prompt(self, x: torch.Tensor, cond: torch.Tensor, valid: torch.Tensor, last: bool):
        """Prompt tokens (B, P, D) through this block -> (next states or None if `last`, k, v). The
        last block's prompt output would feed nothing: only its keys and values are computed."""
        mod = self.ada["prompt"](cond)[:, None].chunk(6, dim=-1)  # 6 x (B, 1, D)
        a, k, v = self.attn.prompt(modulate(self.norm1(x), *mod[:2]), valid, need_output=not last)
        if last:
            return None, k, v
        return self.ffn_residual("prompt", torch.addcmul(x, mod[2], a), mod), k, v


class FinalLayer(nn.Module):
    """AdaLN (shift, scale) + linear map back to one modality's token size."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens and this layer's AdaLN output `self.ada(cond)` (B, 2D) -> (B, N, out_dim)."""
        shift, scale = modulation[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, out_dim)


# ---------------------------------------------------------------------------- the model
class AVDiT(ModelMixin, ConfigMixin):
    """Joint audio-video diffusion transformer predicting clean tokens (x0) for both modalities.

    `clip_spec`, `codec` and `vocab` are stored in the config so that a saved folder rebuilds the
    codec and the prompt vocabulary (see config.py); the network reads only `len(vocab)`.
    `example_prompts`: a few prompts of the training data, which the studio offers as examples.
    """

    @register_to_config
    def __init__(self, video_dim: int, audio_dim: int, vocab: tuple[str, ...] | list[str] = tuple("0123456789"),
                 max_events: int = 3, hidden_size: int = 256, depth: int = 6, num_heads: int = 4,
                 mlp_ratio: float = 4.0, rope_min_period_s: float = 0.125, rope_max_period_s: float = 32.0,
                 token_seconds: float = 1 / 16, clip_spec: dict | None = None, codec: dict | None = None,
                 count_cond: bool = False, timeline_cond: bool = False, layout_prior: dict | None = None,
                 mlp_activation: str = KEYLESS_MLP_ACTIVATION, label_probe: bool = False,
                 example_prompts: list[str] | None = None):
        super().__init__()
        ModelConfig(hidden_size, depth, num_heads, mlp_ratio, rope_min_period_s, rope_max_period_s,
                    count_cond, timeline_cond, mlp_activation, label_probe)  # validates
        d = hidden_size
        self.head_dim = d // num_heads
        self.embed = nn.ModuleDict({"video": nn.Linear(video_dim, d), "audio": nn.Linear(audio_dim, d)})
        # uncaptioned clips train a model with no labels; one unused row keeps masked lookups (id 0) valid
        self.label_embed = nn.Embedding(max(len(vocab), 1), d)
        self.ordinal_embed = nn.Embedding(max_events, d)
        self.null_token = nn.Parameter(torch.zeros(d))  # the whole prompt of an unconditional sample
        self.prompt_cond = nn.Parameter(torch.zeros(d))  # t-independent AdaLN input of prompt tokens
        self.t_embed = TimestepEmbedder(d)
        # number of prompt labels (0 = null prompt), added to every stream's AdaLN input; zero at init,
        # so turning it on for pretrained weights (`avgen train --init-from`) starts from the same function
        self.count_embed = nn.Embedding(max_events + 1, d) if count_cond else None
        # timeline slot per media token (0 none, k + 1 the k-th label, max_events + 1 unknown) and the label
        # active there, both zero at init (see timeline.py)
        self.slot_embed = nn.Embedding(max_events + 2, d) if timeline_cond else None
        self.slot_label = nn.Linear(d, d) if timeline_cond else None
        self.blocks = nn.ModuleList([AVDiTBlock(d, num_heads, mlp_ratio, mlp_activation) for _ in range(depth)])
        self.final = nn.ModuleDict({"video": FinalLayer(d, video_dim), "audio": FinalLayer(d, audio_dim)})
        # training only (see ModelConfig.label_probe): per stream, the residual stream after `depth // 2`
        # blocks -> no event (0) or which vocabulary label (1 + id); zero at init
        self.probe = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d, elementwise_affine=False, eps=1e-6),
                                                          nn.Linear(d, len(vocab) + 1)) for m in MEDIA}) \
            if label_probe else None
        self.initialize_weights()

    @classmethod
    def from_preset(cls, preset: str | ModelConfig, spec: ClipSpec, vocab, max_events: int,
                    codec: CodecConfig | None = None, layout_prior: dict | None = None,
                    example_prompts: list[str] | None = None, **overrides) -> "AVDiT":
        """A fresh model for clips of `spec` tokenised by `codec`, sized by a named preset."""
        cfg = model_config(preset, **overrides)
        tokens = AVCodec(spec, codec)
        return cls(video_dim=tokens.dims["video"], audio_dim=tokens.dims["audio"], vocab=list(vocab),
                   max_events=max_events, token_seconds=tokens.cfg.frames_per_token / spec.fps,
                   clip_spec=spec.to_dict(), codec=tokens.cfg.to_dict(), layout_prior=layout_prior,
                   example_prompts=example_prompts, **cfg.to_dict())

    def initialize_weights(self) -> None:
        """All initialisation in one place (DiT): xavier linears, small embeddings, and zero for
        every AdaLN modulation, every output layer and every cross-modal gate (paths that start at 0)."""
        def xavier(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(xavier)
        for emb in (self.label_embed.weight, self.ordinal_embed.weight, self.null_token, self.prompt_cond):
            nn.init.normal_(emb, std=0.02)
        for layer in self.t_embed.mlp[0::2]:
            nn.init.normal_(layer.weight, std=0.02)
        if self.count_embed is not None:
            nn.init.zeros_(self.count_embed.weight)
        if self.slot_embed is not None:
            for w in (self.slot_embed.weight, self.slot_label.weight, self.slot_label.bias):
                nn.init.zeros_(w)
        for block in self.blocks:
            for ada in block.ada.values():
                nn.init.zeros_(ada[-1].weight)
                nn.init.zeros_(ada[-1].bias)
            for gate in block.attn.cross_gate.values():
                nn.init.zeros_(gate)
        for final in self.final.values():
            for layer in (final.ada[-1], final.linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        for head in (self.probe or {}).values():
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def default_token_times(self, num_tokens: int, device) -> torch.Tensor:
        """(N,) centre of each token in seconds (the codec's `token_times`, from the stored rate)."""
        return (torch.arange(num_tokens, device=device, dtype=torch.float32) + 0.5) * self.config.token_seconds

    def embed_prompt(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Label + ordinal embeddings; a row with no valid label becomes the single null token."""
        positions = torch.arange(prompt_ids.shape[1], device=prompt_ids.device)  # (P,)
        tokens = self.label_embed(prompt_ids) + self.ordinal_embed(positions)[None]  # (B, P, D)
        is_null = ~prompt_mask.any(dim=1)  # (B,)
        first = torch.where(is_null[:, None], self.null_token[None].to(tokens.dtype), tokens[:, 0])  # (B, D)
        tokens = torch.cat([first[:, None], tokens[:, 1:]], dim=1)  # (B, P, D)
        valid = torch.cat([(prompt_mask[:, 0] | is_null)[:, None], prompt_mask[:, 1:]], dim=1)  # (B, P)
        return tokens, valid

    def embed_timeline(self, slots: torch.Tensor | None, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                       batch: int, num_tokens: int) -> torch.Tensor:
        """(B, N) slots (None = unknown everywhere) -> (B, N, D): slot embedding + the active label's."""
        k = self.config.max_events
        if slots is None:
            slots = torch.full((batch, num_tokens), k + 1, dtype=torch.long, device=prompt_ids.device)
        if slots.shape != (batch, num_tokens):
            raise ValueError(f"slots must have shape {(batch, num_tokens)}, got {tuple(slots.shape)}")
        index = (slots - 1).clamp(0, prompt_ids.shape[1] - 1)  # (B, N): the label slot k+1 refers to
        active = (slots >= 1) & (slots <= k) & torch.gather(prompt_mask, 1, index)  # a given, valid label
        labels = self.label_embed(torch.gather(prompt_ids, 1, index)) * active[..., None]  # (B, N, D)
        return self.slot_embed(slots) + self.slot_label(labels)

    def add_count(self, cond: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """AdaLN input (B, D) plus the embedding of the number of labels in the prompt (0 = null), if the
        model has that input: the same for the prompt stream and for both media streams."""
        if self.count_embed is None:
            return cond
        return cond + self.count_embed(prompt_mask.bool().sum(dim=1)).to(cond.dtype)

    def encode_prompt_states(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> PromptStates:
        """The prompt stream through every block: (B, P) ids and mask -> its keys and values per block.
        Prompt tokens attend only to the prompt and their AdaLN input is t-free (plus the label count),
        so this depends on the prompt alone."""
        prompt_mask = prompt_mask.bool()
        x, valid = self.embed_prompt(prompt_ids, prompt_mask)  # (B, P, D), (B, P)
        cond = self.add_count(self.prompt_cond[None].expand(x.shape[0], -1), prompt_mask)  # (B, D)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block.prompt(x, cond, valid, last=i == len(self.blocks) - 1)
            keys.append(k)
            values.append(v)
        return PromptStates(keys, values, valid)

    def modulation(self, t_video: torch.Tensor, t_audio: torch.Tensor, prompt_mask: torch.Tensor) -> Modulation:
        """Every media AdaLN output for rows of noise levels t_video / t_audio (R,) and prompt masks
        (R, P) (only their label counts matter): each layer's in one matmul over all R rows."""
        cond = {m: self.add_count(self.t_embed(t), prompt_mask.bool()) for m, t in (("video", t_video),
                                                                                   ("audio", t_audio))}
        return Modulation([{s: block.ada[s](cond[s]) for s in MEDIA} for block in self.blocks],
                          {m: self.final[m].ada(cond[m]) for m in MEDIA})

    def forward(self, video: torch.Tensor, audio: torch.Tensor, t_video: torch.Tensor, t_audio: torch.Tensor,
                prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cross_modal: bool | torch.Tensor = True,
                token_times: torch.Tensor | None = None, slots: torch.Tensor | None = None,
                prompt_states: PromptStates | None = None, modulation: Modulation | None = None,
                label_logits: bool = False) -> dict[str, torch.Tensor]:
        """Noisy tokens at their own noise levels -> predicted clean tokens {video, audio}.

        video (B, N, Dv), audio (B, N, Da), t_video / t_audio (B,) in [0, 1] (0 = clean),
        prompt_ids (B, P) long, prompt_mask (B, P) bool (all False = null prompt),
        cross_modal: bool or (B,) bool, token_times: (N,) seconds (default: token centres),
        slots: (B, N) timeline slot ids (see timeline.py; None = unknown; ignored by a model without the input),
        prompt_states: `encode_prompt_states(prompt_ids, prompt_mask)` of these same prompt rows,
        computed once by the caller (a sampler reuses it across steps); None computes it here.
        modulation: `modulation(t_video, t_audio, prompt_mask)` of these rows, likewise (a sampler
        computes all of its steps' at once); None computes it here.
        prompt_ids / prompt_mask are needed either way (label count, timeline labels).
        label_logits: also return the label probe's logits, "{video,audio}_labels" (B, N, 1 + vocab)
        (a model with `label_probe`; training only).
        """
        batch, num_tokens = video.shape[:2]
        if audio.shape[1] != num_tokens:
            raise ValueError(f"video has {num_tokens} tokens and audio {audio.shape[1]}: one token per frame each")
        times = self.default_token_times(num_tokens, video.device) if token_times is None else token_times  # (N,)
        if prompt_states is None:
            prompt_states = self.encode_prompt_states(prompt_ids, prompt_mask)
        if prompt_states.valid.shape != prompt_mask.shape or len(prompt_states.keys) != len(self.blocks):
            raise ValueError(f"prompt_states hold {tuple(prompt_states.valid.shape)} prompt tokens over "
                             f"{len(prompt_states.keys)} blocks; this call has {tuple(prompt_mask.shape)} over "
                             f"{len(self.blocks)}: encode them from this call's prompt_ids and prompt_mask")
        layout = build_layout(prompt_states.valid, num_tokens, times, self.head_dim, cross_modal,
                              self.config.rope_min_period_s, self.config.rope_max_period_s)
        if modulation is None:
            modulation = self.modulation(t_video, t_audio, prompt_mask)
        if modulation.rows != batch or len(modulation.blocks) != len(self.blocks):
            raise ValueError(f"modulation holds {modulation.rows} rows over {len(modulation.blocks)} blocks; this "
                             f"call has {batch} over {len(self.blocks)}: compute it from this call's t and prompt_mask")
        x = {"video": self.embed["video"](video), "audio": self.embed["audio"](audio)}
        if self.slot_embed is not None:
            timeline = self.embed_timeline(slots, prompt_ids, prompt_mask.bool(), batch, num_tokens)  # (B, N, D)
            x["video"], x["audio"] = x["video"] + timeline, x["audio"] + timeline
        logits = {}
        for i, (block, mod, k, v) in enumerate(zip(self.blocks, modulation.blocks, prompt_states.keys,
                                                   prompt_states.values, strict=True)):
            x = block(x, mod, layout, k, v)  # {modality: (B, N, D)}
            if label_logits and i + 1 == len(self.blocks) // 2:
                logits = {f"{m}_labels": self.probe[m](x[m]) for m in MEDIA}  # (B, N, 1 + vocab)
        out = {m: self.final[m](x[m], modulation.final[m]) for m in MEDIA}  # {video: (B, N, Dv), audio: (B, N, Da)}
        return {**out, **logits}
