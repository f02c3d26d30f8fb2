"""The instruction-aware additions to a causal LM. Each one starts as an exact no-op.

Every module's output path ends in a zero-initialised weight (or adds a zero bias), so at step 0 the
modified model computes exactly what the base model computes; training then moves them off zero.
Shapes: B rows, T tokens, N samples in the batch (more than B when packing), D model width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .data import NUM_SEGMENTS


def sample_mean(x: torch.Tensor, sample_idx: torch.Tensor, select: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of x (B,T,D) over the selected tokens of each sample -> (N,D); zeros for a sample with none."""
    sel = select & (sample_idx >= 0)
    flat_idx = sample_idx[sel]
    vals = x[sel]
    sums = x.new_zeros((n, x.shape[-1])).index_add(0, flat_idx, vals)
    counts = x.new_zeros((n,)).index_add(0, flat_idx, torch.ones_like(flat_idx, dtype=x.dtype))
    return sums / counts.clamp(min=1).unsqueeze(-1)


class SegmentEmbedding(nn.Module):
    """A learned vector per segment (instruction, input, response, ...) added to the token embeddings."""

    def __init__(self, d_model: int):
        super().__init__()
        self.table = nn.Embedding(NUM_SEGMENTS, d_model)
        nn.init.zeros_(self.table.weight)

    def forward(self, segment_ids: torch.Tensor) -> torch.Tensor:
        return self.table(segment_ids)


class InstructionAttentionBias(nn.Module):
    """Per layer and head, a learned additive bias on attention scores towards instruction-token keys.

    Optionally scaled by the sample's complexity (0..1): bias = b[l,h] + c[l,h] * complexity.
    """

    def __init__(self, n_layers: int, n_heads: int, complexity: bool):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_layers, n_heads))
        self.by_complexity = nn.Parameter(torch.zeros(n_layers, n_heads)) if complexity else None

    def query_column(self, layer: int, query_complexity: torch.Tensor) -> torch.Tensor:
        """(B,H,T,1) bias each query gives to instruction keys. Packed samples never attend across each
        other, so the query's sample complexity is the key's."""
        b = self.bias[layer][None, :, None]
        if self.by_complexity is not None:
            b = b + self.by_complexity[layer][None, :, None] * query_complexity[:, None, :]
        return b.unsqueeze(-1)

    def layer_bias(self, layer: int, inst_key: torch.Tensor, key_complexity: torch.Tensor) -> torch.Tensor:
        """(B,H,1,T) additive scores for one layer; inst_key and key_complexity are (B,T) floats."""
        b = self.bias[layer][None, :, None, None]
        if self.by_complexity is not None:
            b = b + self.by_complexity[layer][None, :, None, None] * key_complexity[:, None, None, :]
        return b * inst_key[:, None, None, :]


class _EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.out(a.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class InstructionEncoder(nn.Module):
    """The second stream: a small bidirectional transformer over each sample's instruction tokens."""

    def __init__(self, d_model: int, d_enc: int, layers: int, heads: int, max_positions: int = 2048):
        super().__init__()
        if d_enc % heads:
            raise ValueError(f"fusion_dim {d_enc} must be divisible by fusion_heads {heads}")
        self.max_positions = max_positions
        self.proj = nn.Linear(d_model, d_enc)
        self.pos = nn.Embedding(max_positions, d_enc)
        self.layers = nn.ModuleList(_EncoderLayer(d_enc, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d_enc)

    def forward(self, tok_emb: torch.Tensor, position_ids: torch.Tensor, inst: torch.Tensor,
                sample_idx: torch.Tensor, n: int) -> torch.Tensor:
        """Pooled instruction vector per sample, (N, d_enc)."""
        # work on the instruction tokens only: gather them to the front of each row (stable order)
        k = max(1, int(inst.sum(1).max()))
        order = torch.sort((~inst).to(torch.int8), dim=1, stable=True).indices[:, :k]
        tok_emb = tok_emb.gather(1, order.unsqueeze(-1).expand(-1, -1, tok_emb.shape[-1]))
        position_ids = position_ids.gather(1, order)
        sample_idx = sample_idx.gather(1, order)
        inst = inst.gather(1, order)
        x = self.proj(tok_emb) + self.pos(position_ids.clamp(max=self.max_positions - 1))
        same = sample_idx[:, :, None] == sample_idx[:, None, :]
        eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
        allowed = ((inst[:, :, None] & inst[:, None, :] & same) | eye)[:, None]
        for layer in self.layers:
            x = layer(x, allowed)
        return sample_mean(self.norm(x), sample_idx, inst, n)


class TwoStreamFusion(nn.Module):
    """Fuses the instruction vector into the token embeddings and re-injects it after every decoder layer.

    embeddings += W_f e;  h_l += sigmoid(G_l e + g_l) * (U_l e). W_f and U_l start at zero, so the gates
    (0.5 at init) open onto nothing until training moves U_l. Only tokens after the sample's instruction get
    it: an instruction token must not see later instruction tokens through the encoder.
    """

    def __init__(self, d_enc: int, d_model: int, n_layers: int):
        super().__init__()
        self.n_layers, self.d_model = n_layers, d_model
        self.fuse = nn.Linear(d_enc, d_model)
        self.gate = nn.Linear(d_enc, n_layers * d_model)
        self.inject = nn.Linear(d_enc, n_layers * d_model, bias=False)
        for w in (self.fuse.weight, self.fuse.bias, self.gate.weight, self.gate.bias, self.inject.weight):
            nn.init.zeros_(w)

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,D) embedding addition and (N,L,D) per-layer injections."""
        n = e.shape[0]
        per_layer = torch.sigmoid(self.gate(e)) * self.inject(e)
        return self.fuse(e), per_layer.view(n, self.n_layers, self.d_model)


class TemperatureHead(nn.Module):
    """Pooled instruction state -> a sampling temperature (softplus, floor 0.05)."""

    def __init__(self, d_model: int, init_temperature: float = 0.7):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_model, 64), nn.GELU(), nn.Linear(64, 1))
        nn.init.zeros_(self.mlp[2].weight)
        with torch.no_grad():   # start by predicting init_temperature for every input
            self.mlp[2].bias.fill_(math.log(math.expm1(init_temperature - 0.05)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.mlp(pooled.float()).squeeze(-1)) + 0.05


class ReasoningHead(nn.Module):
    """Several parallel projections of the final hidden state, concatenated and projected back (residual).

    The parallel paths are computed as one wide matmul (the same maths as separate projections + concat).
    """

    def __init__(self, d_model: int, paths: int):
        super().__init__()
        self.width = max(8, d_model // paths)
        self.up = nn.Linear(d_model, self.width * paths)
        self.back = nn.Linear(self.width * paths, d_model)
        nn.init.zeros_(self.back.weight)
        nn.init.zeros_(self.back.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.back(F.gelu(self.up(h)))
