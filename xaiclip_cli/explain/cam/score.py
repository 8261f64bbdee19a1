"""Score-CAM and gScore-CAM: channel weights from the target score of the input masked by each activation map.

Follows pytorch-grad-cam's ``ScoreCAM`` (bilinear ``align_corners=True`` upsampling, min-max eps 1e-8, softmax over
channels) and anguyen8/gScoreCAM (top-k channels by mean gradient, eps 1e-6, NaN→0, unselected channels scored 0
before the softmax). Each image is scored with its own target; forwards run under ``no_grad`` in chunks, and masks
are built chunk by chunk so memory does not grow with the channel count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

# scorer(pixels [n,3,S,S], image index b) -> target score of image b's target for each of the n inputs [n]
Scorer = Callable[[torch.Tensor, int], torch.Tensor]


def normalised_masks(A: torch.Tensor, size: tuple[int, int], eps: float) -> torch.Tensor:
    """Activation maps [N, C, h, w] upsampled to ``size`` and min-max scaled per channel: [N, C, S, S]."""
    up = F.interpolate(A if A.dtype == torch.float64 else A.float(), size=size, mode="bilinear", align_corners=True)
    flat = up.flatten(2)
    mins = flat.min(dim=-1).values[..., None, None]
    maxs = flat.max(dim=-1).values[..., None, None]
    return (up - mins) / (maxs - mins + eps)


def channel_scores(
    A: torch.Tensor, pixels: torch.Tensor, scorer: Scorer, chunk: int, eps: float,
    channels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores [B, C'] of every image masked by each of its channel masks (``channels`` [B, C'] selects some).

    A channel whose upsampled map is constant normalises to an all-zero mask, so every such channel masks the
    image to the same blank input: it is scored once and the score shared (identical values; after ReLU about a
    quarter of a CNN's last-stage channels are dead on a given image, which saves that share of the forwards).
    The other masked inputs go through the model in forwards of ``chunk`` inputs.
    """
    size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    dtype = torch.float64 if A.dtype == torch.float64 else torch.float32
    out = []
    with torch.no_grad():
        for b in range(pixels.shape[0]):
            acts = A[b] if channels is None else A[b, channels[b]]
            scores = torch.empty(int(acts.shape[0]), dtype=dtype, device=pixels.device)
            ids_buf: list[torch.Tensor] = []
            x_buf: list[torch.Tensor] = []
            first_blank: int | None = None  # the one blank channel that is scored ...
            copies: list[torch.Tensor] = []  # ... and the blank channels that take its score
            for i in range(0, int(acts.shape[0]), chunk):
                m = normalised_masks(acts[None, i:i + chunk], size, eps)[0]  # [n, S, S]
                live = (m.flatten(1).amax(dim=1) > 0).to(pixels.device)
                ids = torch.arange(i, i + int(m.shape[0]), device=pixels.device)
                if first_blank is None and not bool(live.all()):
                    first_blank = int(torch.nonzero(~live)[0]) + i
                    live[first_blank - i] = True  # its masked input is the blank image
                copies.append(ids[~live])
                ids_buf.append(ids[live])
                x_buf.append(pixels[b][None] * m[live.to(m.device)][:, None].to(pixels.dtype))
                ids_buf, x_buf = _score_full_chunks(ids_buf, x_buf, chunk, scores, lambda x, b=b: scorer(x, b))
            if ids_buf:
                scores[torch.cat(ids_buf)] = scorer(torch.cat(x_buf), b).to(dtype)
            if first_blank is not None:
                scores[torch.cat(copies)] = scores[first_blank].clone()
            out.append(scores)
    return torch.stack(out)


def _score_full_chunks(ids_buf: list[torch.Tensor], x_buf: list[torch.Tensor], chunk: int, scores: torch.Tensor,
                       score: Callable[[torch.Tensor], torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Score buffered masked inputs in forwards of exactly ``chunk``; returns what is left in the buffer."""
    if sum(int(t.shape[0]) for t in ids_buf) < chunk:
        return ids_buf, x_buf
    ids, x = torch.cat(ids_buf), torch.cat(x_buf)
    while ids.shape[0] >= chunk:
        scores[ids[:chunk]] = score(x[:chunk]).to(scores.dtype)
        ids, x = ids[chunk:], x[chunk:]
    return ([ids], [x]) if ids.shape[0] else ([], [])


def scorecam_weights(A: torch.Tensor, pixels: torch.Tensor, scorer: Scorer, chunk: int = 16) -> torch.Tensor:
    """Score-CAM channel weights [B, C]: softmax over channels of the masked-input target scores."""
    return channel_scores(A, pixels, scorer, chunk, eps=1e-8).softmax(dim=-1)


def gscorecam_weights(
    A: torch.Tensor, G: torch.Tensor, pixels: torch.Tensor, scorer: Scorer, topk: int = 300, chunk: int = 16,
    unselected: Literal["ref", "exclude"] = "ref",
) -> torch.Tensor:
    """gScore-CAM channel weights [B, C]: only the top-k channels by signed mean gradient are scored.

    ``unselected="ref"`` reproduces the reference (unscored channels enter the softmax with score 0, each keeping
    weight e⁰/Z); ``"exclude"`` gives them weight 0. Channels are picked per image (the reference picks them from
    the first image of a batch only, so it is compared at batch size 1).
    """
    B, C = A.shape[:2]
    k = max(1, min(int(topk), C))
    idx = G.mean(dim=(2, 3)).topk(k, dim=1).indices  # [B, k]
    scores = torch.nan_to_num(channel_scores(A, pixels, scorer, chunk, eps=1e-6, channels=idx), nan=0.0)
    fill = float("-inf") if unselected == "exclude" else 0.0
    full = torch.full((B, C), fill, device=scores.device, dtype=scores.dtype)
    full.scatter_(1, idx.to(scores.device), scores)
    return full.softmax(dim=-1)


def weighted_map(A: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """M = Σ_c w_c A_c for weights [B, C] and activations [B, C, h, w]."""
    return (weights[:, :, None, None].to(A.device, A.dtype) * A).sum(dim=1)
