"""Random-weight models for the benchmarks (not a test; no checkpoint needed).

* :class:`LLaDALike`: LLaDA's architecture (pre-RMSNorm, rotary positions, SwiGLU, bidirectional attention, an
  untied LM head) with Fast-dLLM's KV-cache interface: ``forward(input_ids, attention_mask=None,
  past_key_values=None, use_cache=False, replace_position=None)`` returns ``.logits`` and, with ``use_cache``,
  ``.past_key_values`` (per layer ``(key, value)`` ``[B, heads, S, d_head]``, keys after the rotation). Run
  columns take the positions after the cached ones (prefix) or ``replace_position``'s columns (dual).
* :class:`EditedLogits`: wraps a model and edits its logits after the head (a scale), as several MDMs do, so the
  LM head cannot be applied at selected positions only: the full-logits path.
* :data:`SIZES`: named configurations (``tiny`` for CPU smoke runs, ``small`` for the CPU benchmark, ``1b`` and
  ``8b`` LLaDA-like for one GPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LLaDAConfig", "LLaDALike", "EditedLogits", "SIZES", "LLADA_MASK_ID"]

LLADA_MASK_ID = 126336


@dataclass(frozen=True)
class LLaDAConfig:
    vocab_size: int = 126464
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    ffn: int = 12288
    max_len: int = 4096
    mask_token_id: int = LLADA_MASK_ID
    rope_theta: float = 500000.0


#: LLaDA-8B's dimensions, a 1B-class one, and small CPU ones.
SIZES: dict[str, LLaDAConfig] = {
    "8b": LLaDAConfig(),
    "1b": LLaDAConfig(d_model=2048, n_layers=16, n_heads=16, ffn=5632),
    "small": LLaDAConfig(vocab_size=32000, d_model=256, n_layers=4, n_heads=4, ffn=704, max_len=2048,
                         mask_token_id=31999),
    "tiny": LLaDAConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, ffn=128, max_len=1024, mask_token_id=511),
}


class _Layer(nn.Module):
    def __init__(self, c: LLaDAConfig, **factory: object) -> None:
        super().__init__()
        d, f = c.d_model, c.ffn
        self.heads = c.n_heads
        self.attn_norm = nn.RMSNorm(d, eps=1e-5, **factory)
        self.ff_norm = nn.RMSNorm(d, eps=1e-5, **factory)
        self.qkv = nn.Linear(d, 3 * d, bias=False, **factory)
        self.out = nn.Linear(d, d, bias=False, **factory)
        self.up = nn.Linear(d, 2 * f, bias=False, **factory)
        self.down = nn.Linear(f, d, bias=False, **factory)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None,
                replace: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, q, d = h.shape
        qkv = self.qkv(self.attn_norm(h)).view(b, q, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        qs, ks = _rotate(qkv[0], *rope), _rotate(qkv[1], *rope)
        vs = qkv[2]
        if past is not None:
            if replace is None:
                ks, vs = torch.cat([past[0], ks], dim=-2), torch.cat([past[1], vs], dim=-2)
            else:  # dual cache: the run columns replace their cached entries (in place, as Fast-dLLM does)
                past[0][:, :, replace], past[1][:, :, replace] = ks, vs
                ks, vs = past
        att = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask)
        h = h + self.out(att.transpose(1, 2).reshape(b, q, d))
        gate, up = self.up(self.ff_norm(h)).chunk(2, dim=-1)
        return h + self.down(F.silu(gate) * up), (ks, vs)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class LLaDALike(nn.Module):
    """LLaDA-shaped masked diffusion LM with random weights (see the module docstring)."""

    def __init__(self, config: LLaDAConfig, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.c = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model, **factory)
        self.layers = nn.ModuleList(_Layer(config, **factory) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=1e-5, **factory)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False, **factory)
        gen = torch.Generator(device=self.wte.weight.device).manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():  # unit-variance activations: predictions depend on the context
                if "norm" not in name:
                    std = 1.0 if name == "wte.weight" else 2.0 / math.sqrt(p.shape[-1])
                    p.normal_(0.0, std, generator=gen)
        self.config = SimpleNamespace(model_type="llada", architectures=["LLaDAModelLM"], vocab_size=config.vocab_size,
                                      mask_token_id=config.mask_token_id, max_sequence_length=config.max_len)
        self.eval()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.c.d_model // self.c.n_heads
        inv = 1.0 / (self.c.rope_theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
        ang = positions.float()[:, None] * inv[None, :]
        ang = torch.cat([ang, ang], dim=-1)
        return ang.cos().to(dtype), ang.sin().to(dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None, use_cache: bool = False,
                replace_position: torch.Tensor | None = None) -> SimpleNamespace:
        q = input_ids.shape[1]
        past, replace = past_key_values, None
        start = 0 if past is None else past[0][0].shape[-2]
        positions = torch.arange(start, start + q, device=input_ids.device)
        if past is not None and replace_position is not None:
            replace = replace_position.nonzero(as_tuple=True)[1]
            positions = replace
        h = self.wte(input_ids)
        rope = self._rope(positions, h.dtype)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        presents = []
        for i, layer in enumerate(self.layers):
            h, kv = layer(h, rope, mask, None if past is None else past[i], replace)
            presents.append(kv)
        return SimpleNamespace(logits=self.lm_head(self.norm(h)), past_key_values=presents if use_cache else None)


class EditedLogits(nn.Module):
    """``model`` with its logits scaled after the head (so the positions-only head shortcut cannot apply)."""

    def __init__(self, model: nn.Module, scale: float = 0.5) -> None:
        super().__init__()
        self.inner, self.scale = model, scale
        self.config = model.config

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: object):
        out = self.inner(input_ids, attention_mask, **kwargs)
        out.logits = out.logits.mul_(self.scale)
        return out
