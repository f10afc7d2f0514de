"""Attention inside clusters of similar tokens ("cluster"): the map's tokens are grouped by balanced k-means on their
features into groups of one window's size, and attend inside their group: groups chosen by content instead of
fixed windows (the seeds' "hierarchical clustering versus fixed windows")."""
from __future__ import annotations

import math

import torch

from . import MixerSpec, TokenMixer, register_mixer
from .core import GroupAttention

KMEANS_ITERS = 3  # Lloyd iterations after the initial assignment: the grouping changes little after a few


def group_capacities(L: int, N: int) -> tuple[int, ...]:
    """How many of L tokens each group holds: ceil(L / N) groups of N, the last one holding the remainder."""
    G = math.ceil(L / N)
    return (N,) * (G - 1) + (L - (G - 1) * N,)


def balanced_assign(feat: torch.Tensor, centroids: torch.Tensor, caps: tuple[int, ...]) -> torch.Tensor:
    """(B, L, C) tokens, (B, G, C) centroids -> (B, L) group of each token, group g taking exactly caps[g] tokens
    (sum(caps) = L): greedily, group after group, each takes its caps[g] nearest (euclidean) tokens not yet taken,
    nearer first and, at equal distance, the lower token index first."""
    B, L, _ = feat.shape
    rank = torch.cdist(feat, centroids).argsort(dim=1, stable=True)  # (B, L, G): tokens, nearest first
    taken = torch.zeros(B, L, dtype=torch.bool, device=feat.device)
    group = torch.empty(B, L, dtype=torch.long, device=feat.device)
    for g, cap in enumerate(caps):
        order = rank[:, :, g]  # (B, L)
        free = ~taken.gather(1, order)
        pick = free & (free.cumsum(1) <= cap)  # (B, L): exactly cap per row, in nearest-first order
        first = (~pick).to(torch.uint8).argsort(dim=1, stable=True)[:, :cap]  # their places in `order` (no nonzero:
        chosen = order.gather(1, first)  # (B, cap) each row's cap nearest free tokens; runs on the meta device too)
        taken.scatter_(1, chosen, True)
        group.scatter_(1, chosen, g)
    return group


@torch.no_grad()
def balanced_kmeans(feat: torch.Tensor, N: int, iters: int = KMEANS_ITERS) -> torch.Tensor:
    """(B, L, C) -> (B, L) group of each token: ceil(L / N) groups of N tokens (the last one the remainder) by
    balanced k-means. Deterministic: centroids start at evenly spaced tokens (raster order, token (g + 1/2) L / G
    for group g), then `iters` rounds of balanced assignment and centroid = mean of the group's tokens. Computed
    in at least float32, without gradient."""
    feat = feat.to(torch.promote_types(feat.dtype, torch.float32))
    B, L, C = feat.shape
    caps = group_capacities(L, N)
    G = len(caps)
    start = ((torch.arange(G, dtype=torch.float64) + 0.5) * L / G).long().to(feat.device)
    centroids = feat[:, start]  # (B, G, C)
    counts = torch.tensor(caps, dtype=feat.dtype, device=feat.device)[None, :, None]  # (1, G, 1)
    for _ in range(iters):
        group = balanced_assign(feat, centroids, caps)
        sums = torch.zeros(B, G, C, dtype=feat.dtype, device=feat.device)
        centroids = sums.scatter_add_(1, group[..., None].expand(B, L, C), feat) / counts
    return balanced_assign(feat, centroids, caps)


@register_mixer("cluster")
class ClusterMixer(TokenMixer):
    """Balanced-k-means groups of N = prod(window) tokens, attention inside each group, (B, H, W, C) -> (B, H, W, C).

    `balanced_kmeans` on the input tokens themselves (no gradient through the grouping) gives ceil(HW / N) groups of
    N tokens, the last holding the rest (a map of fewer than N tokens is one group, i.e. global attention). The
    last group is padded to N with zero tokens whose keys are masked out (-inf). Inside a group tokens keep their
    raster order; the attention (GroupAttention: V1 scaled dot product or V2 cosine with a learned logit scale) has
    no position bias, as groups are not spatial windows (position comes from the model's absolute embedding).
    Deterministic for a given input."""

    def __init__(self, spec: MixerSpec):
        super().__init__()
        self.group_size = math.prod(spec.window)
        self.iters = KMEANS_ITERS
        self.attn = GroupAttention(spec.dim, spec.num_heads, spec.cfg)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, iters={self.iters}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        N = min(self.group_size, H * W)
        return self.attend_groups(x, balanced_kmeans(x.detach().reshape(B, H * W, C), N, self.iters), N)

    def attend_groups(self, x: torch.Tensor, group: torch.Tensor, N: int) -> torch.Tensor:
        """x (B, H, W, C), group (B, HW) of each token (groups of N, the last one possibly fewer) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        L = H * W
        G = math.ceil(L / N)
        slots = torch.arange(L, device=x.device).expand(B, L)
        order = torch.sort(group * L + slots, dim=1).indices  # (B, L): tokens group after group, raster inside
        order = torch.cat((order, order.new_full((B, G * N - L), L)), 1)  # (B, G*N): index L is the zero pad token
        tokens = torch.cat((x.reshape(B, L, C), x.new_zeros(B, 1, C)), 1)  # (B, L + 1, C)
        groups = tokens.gather(1, order[..., None].expand(B, G * N, C)).view(B * G, N, C)
        bias = None
        if G * N != L:  # the last group's pad slots: keys with no weight
            bias = torch.zeros(G, N, dtype=x.dtype, device=x.device)
            bias[-1, N - (G * N - L):] = float("-inf")
            bias = bias.expand(B, G, N).reshape(B * G, 1, 1, N)
        out = self.attn(groups, bias=bias).view(B, G * N, C)[:, :L]  # the pad slots are last: drop them
        inverse = torch.empty_like(order[:, :L]).scatter_(1, order[:, :L], slots)  # slot of each token
        return out.gather(1, inverse[..., None].expand(B, L, C)).view(B, H, W, C)
