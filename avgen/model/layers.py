"""The transformer's building blocks that hold no weights of the whole model: the noise-level
embedding, rotary position embedding on time in seconds (one clock for both modalities), AdaLN
modulation, the FFN, and the per-call layout of the token sequence (masks, RoPE tables) together
with what a sampler computes once per call (`PromptStates`, `Modulation`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from avgen.model.config import MLP_ACTIVATIONS

STREAMS = ("prompt", "video", "audio")  # streams with their own embeddings, AdaLN and FFN
MEDIA = ("video", "audio")


# ---------------------------------------------------------------------------- embeddings
class TimestepEmbedder(nn.Module):
    """Noise level t in [0, 1] -> vector (DiT): sinusoidal features of 1000 t, then an MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000 * t.float()[:, None] * freqs[None]  # (B, half)
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))  # (B, D)


def rope_angles(times_s: torch.Tensor, head_dim: int, min_period_s: float, max_period_s: float) -> torch.Tensor:
    """(L,) seconds -> (L, head_dim / 2) rotation angles; periods geometric in [min, max] seconds.

    A function of time only: two tokens of the same instant get the same angles, whatever their
    modality or index.
    """
    periods = torch.logspace(math.log10(min_period_s), math.log10(max_period_s), head_dim // 2,
                             device=times_s.device, dtype=torch.float64)
    return (times_s.double()[:, None] * (2 * math.pi / periods)[None]).float()  # (L, hd/2)


def rope_tables(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, hd/2) angles -> what `apply_rope` multiplies by: ([cos, cos], [-sin, sin]), each (L, hd)."""
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate channel pairs (i, i + hd/2) of x (B, H, L, hd) by their angles, given as `rope_tables`
    (computed once per forward, see `build_layout`): [x1 cos - x2 sin, x2 cos + x1 sin] as
    x * [cos, cos] + [x2, x1] * [-sin, sin], three ops instead of eight."""
    cos, sin = (c.to(x.dtype) for c in tables)
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)  # (B, H, L, hd)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift, x, 1 + scale)  # x * (1 + scale) + shift in one pass


def feed_forward(dim: int, mlp_ratio: float, activation: str) -> nn.Sequential:
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate=MLP_ACTIVATIONS[activation]),
                         nn.Linear(hidden, dim))


# ---------------------------------------------------------------------------- sequence layout
@dataclass
class PromptStates:
    """The prompt stream's keys and values at every block, and which prompt tokens are valid.

    Computed by `AVDiT.encode_prompt_states` from the prompt alone; `select` picks rows, so one
    encoding serves every guidance pass of a sampling call. They belong to the weights, dtype
    (autocast) and grad mode they were computed under: encode again after any of those change."""

    keys: list[torch.Tensor]  # per block (B, H, P, hd)
    values: list[torch.Tensor]  # per block (B, H, P, hd)
    valid: torch.Tensor  # (B, P) bool

    def select(self, rows: torch.Tensor) -> "PromptStates":
        """The states of batch rows `rows` (long (K,)), in that order."""
        return PromptStates([k[rows] for k in self.keys], [v[rows] for v in self.values], self.valid[rows])


@dataclass
class Modulation:
    """Every AdaLN output of the media streams, per batch row: what a row's noise levels and label
    count make of each block's (shift, scale, gate) x 2 vectors and each final layer's (shift, scale).

    They depend on nothing else, so a sampler computes them for all of its steps and guidance rows
    at once (`AVDiT.modulation`: one matmul per layer instead of one tiny one per layer per step,
    each of which streamed the layer's whole weight for 1-2 rows), `narrow`s to a step's rows and
    `select`s its passes'. Like `PromptStates`, they belong to the weights, dtype (autocast) and
    grad mode they were computed under."""

    blocks: list[dict[str, torch.Tensor]]  # per block: media stream -> (R, 6D)
    final: dict[str, torch.Tensor]  # media stream -> (R, 2D)

    @property
    def rows(self) -> int:
        return self.final["video"].shape[0]

    def rows_by(self, pick) -> "Modulation":
        """Every table with `pick` applied to it (a function of an (R, .) tensor)."""
        return Modulation([{s: pick(m) for s, m in b.items()} for b in self.blocks],
                          {s: pick(m) for s, m in self.final.items()})

    def select(self, rows: torch.Tensor) -> "Modulation":
        """The modulations of rows `rows` (long (K,)), in that order."""
        return self.rows_by(lambda m: m[rows])

    def narrow(self, start: int, length: int) -> "Modulation":
        """Rows start ... start + length - 1, as views (no copy)."""
        return self.rows_by(lambda m: m.narrow(0, start, length))


@dataclass
class Layout:
    """Where each media stream sits in the media sequence, and the masks every block shares."""

    lengths: dict[str, int]  # media stream -> token count
    rope: tuple[torch.Tensor, torch.Tensor]  # `rope_tables` (M, hd) of the media tokens' angles (prompt: unrotated)
    self_mask: torch.Tensor  # (B, 1, M, P + M) bool: media -> valid prompt tokens + same modality
    cross_mask: torch.Tensor  # (1, 1, M, M) bool over media tokens: video <-> audio only
    cross_keep: torch.Tensor  # (B, 1, 1) 1.0 where the cross-modal path is open for that sample
    _biases: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # see `bias`

    def split(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(MEDIA, x.split([self.lengths[s] for s in MEDIA], dim=1)))

    def bias(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """Mask `name` ("self_mask" or "cross_mask") as the additive bias attention adds to its logits
        (0 where allowed, -inf elsewhere), in `dtype`: made once per forward, not by every block's
        attention call from the boolean mask."""
        key = (name, dtype)
        if key not in self._biases:
            mask = getattr(self, name)
            self._biases[key] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -math.inf)
        return self._biases[key]


def build_layout(prompt_valid: torch.Tensor, num_media: int, times_s: torch.Tensor, head_dim: int,
                 cross_modal: bool | torch.Tensor, min_period_s: float, max_period_s: float) -> Layout:
    """Masks and RoPE angles for the media tokens [video (N) | audio (N)], whose queries read the
    prompt's keys (P) followed by their own."""
    batch = prompt_valid.shape[0]
    device = prompt_valid.device
    lengths = {"video": num_media, "audio": num_media}
    media_id = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(lengths.values())])  # (M,)
    same = media_id[:, None] == media_id[None, :]  # (M, M)
    self_mask = torch.cat([prompt_valid[:, None, :].expand(batch, len(media_id), -1),
                           same[None].expand(batch, -1, -1)], dim=2)[:, None]  # (B, 1, M, P + M)
    cross_mask = (~same)[None, None]  # (1, 1, M, M)
    keep = torch.as_tensor(cross_modal, device=device).float().reshape(-1, 1, 1).expand(batch, 1, 1)  # (B, 1, 1)
    angles = rope_angles(times_s.to(device), head_dim, min_period_s, max_period_s)  # (N, hd/2)
    angles = torch.cat([angles, angles])  # (M, hd/2)
    return Layout(lengths, rope_tables(angles), self_mask, cross_mask, keep)



__all__ = ["MEDIA", "STREAMS", "Layout", "Modulation", "PromptStates", "TimestepEmbedder", "apply_rope", "build_layout",
           "feed_forward", "modulate", "rope_angles", "rope_tables"]
