"""NEFTune (Jain et al. 2023): uniform noise on the input embeddings while training, none at eval.

noise = U(-1, 1) * alpha / sqrt(L * d), with d the embedding width and L the length of the token's own
sample. The paper defines L per sequence; Hugging Face's and TRL's hooks use the padded row length, which
in packed rows (several samples per row) would shrink every sample's noise by the row's fill. Scaling by
each sample's own length keeps the noise the paper's whatever the packing. Padding gets none.
"""

from __future__ import annotations

import torch


def sample_lengths(sample_idx: torch.Tensor) -> torch.Tensor:
    """(B,T) length of each token's sample (0 on padding, where sample_idx is -1)."""
    real = sample_idx >= 0
    flat = sample_idx.clamp(min=0)
    n = int(flat.max()) + 1 if real.any() else 1
    counts = torch.zeros(n, dtype=torch.long, device=sample_idx.device).index_add(
        0, flat[real], torch.ones_like(flat[real]))
    return torch.where(real, counts[flat], 0)


def neftune_scale(sample_idx: torch.Tensor, d_model: int, alpha: float) -> torch.Tensor:
    """(B,T,1) bound of the uniform noise per token: alpha / sqrt(L * d); 0 on padding."""
    lengths = sample_lengths(sample_idx).double()
    scale = torch.where(lengths > 0, alpha / torch.sqrt(lengths.clamp(min=1) * d_model), 0.0)
    return scale.unsqueeze(-1)


def add_neftune_noise(embeddings: torch.Tensor, sample_idx: torch.Tensor, alpha: float) -> torch.Tensor:
    """Embeddings plus NEFTune noise (draws from torch's global RNG, so a resumed run repeats them)."""
    scale = neftune_scale(sample_idx, embeddings.shape[-1], alpha).to(embeddings.dtype)
    noise = torch.empty_like(embeddings).uniform_(-1.0, 1.0)
    return embeddings + noise * scale
