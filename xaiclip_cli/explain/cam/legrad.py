"""LeGrad (Bousselham et al. 2024, arXiv 2404.03214): token-gradient maps of ViT/SigLIP image towers.

For each of the last K blocks l, the block's tokens are sent through the rest of the tower as if they were the last
block's output (final norm, pooling, projection, normalisation), giving s_l = ⟨f_l, t̂⟩ with the target text t̂.
The map of layer l is ReLU(∂s_l/∂P_l) averaged over heads and queries, read at the patch keys, where P_l are
attention probabilities: the block's self-attention for CLS/mean-pooled towers (fed the *mean token* of block l, as
the reference does), or the MAP attention-pool head's probabilities for SigLIP-style towers (fed block l's tokens).
Maps are summed over l; for MAP towers, positions where the min-max map of an "empty" prompt exceeds 0.8 are zeroed
(the reference's correction). Min-max scaling is left to the CAM pipeline (``--normalise``).

Supported towers: timm ViTs (toy-vit, checkpoint ViTs, the ConceptCLIP trunk; CLS, mean or ``AttentionPoolLatent``
pooling) and the ``hf`` backend's transformers towers: CLIP (CLS → ``post_layernorm`` → ``visual_projection``) and
SigLIP (``post_layernorm`` → ``SiglipMultiheadAttentionPoolingHead``). CNN and other towers get a one-line UsageError.

Hand-written because no installed library implements it: the reference (WalBouss/LeGrad, MIT) patches open_clip's
forward methods. Here the backend's own ``encode_image`` is reused for every layer by temporarily swapping the block
stack (timm ``trunk.blocks``; transformers ``vision_model.encoder``) for a module that returns the captured block-l
tokens, so each backend's head (CLS, mean or MAP pooling, ``image_proj``, ConceptCLIP's head, CLIP's
``post_layernorm`` + ``visual_projection``) is the one its global feature uses. Self-attention probabilities are read
where the forward uses them: at ``attn.attn_drop``'s input with timm's fused attention switched off, and as the
second output of transformers' ``self_attn`` with ``config._attn_implementation`` set to ``"eager"`` (SDPA returns
no probabilities; eval-mode dropout with p=0 returns the tensor itself), both only for the call (restored after,
also on error). timm's ``AttentionPoolLatent`` computes its softmax inline and SigLIP's head goes through
``nn.MultiheadAttention``, whose returned weights are a copy (head-averaged by default) rather than the tensor it
multiplies, so both forwards are re-expressed (:class:`ProbedPool`, :class:`ProbedMapHead`) with the probabilities
kept (tests check them against the libraries' outputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.explain.layers import backend_grid, token_grid_for

EMPTY_PROMPT = "a photo of a"  # the reference's "empty" prompt (a template without a class)
EMPTY_THRESHOLD = 0.8

_CNN_HINT = "use gradcam, layercam or gscorecam for CNN towers"


@dataclass
class VitTower:
    """The ViT trunk inside a backend's image tower (timm or transformers), and how its features are pooled."""

    trunk: nn.Module
    name: str  # dotted path of the trunk in the vision module ("" = the vision module itself)
    depth: int
    map_pool: bool  # MAP attention-pool head (SigLIP, ConceptCLIP, toy-vit) rather than CLS/avg pooling
    prefix: int  # CLS/register tokens before the patch tokens
    key_prefix: int  # prefix tokens among the keys of the explained attention (0 when MAP skips the prefix)
    family: str = "timm"  # "timm" (trunk.blocks / trunk.attn_pool) or "hf" (vision_model.encoder.layers / .head)
    width: int = 0  # token width of the blocks

    @property
    def blocks(self) -> nn.Module:
        """The block stack (timm ``blocks``, transformers ``encoder.layers``)."""
        return self.trunk.encoder.layers if self.family == "hf" else self.trunk.blocks

    @property
    def stack_attr(self) -> tuple[nn.Module, str]:
        """(parent, attribute) of the module swapped for the captured tokens: timm ``blocks``, hf ``encoder``."""
        return (self.trunk, "encoder") if self.family == "hf" else (self.trunk, "blocks")

    @property
    def pool_attr(self) -> str:
        """Attribute of the MAP head on the trunk."""
        return "head" if self.family == "hf" else "attn_pool"


def _is_timm_vit(m: nn.Module) -> bool:
    return (isinstance(getattr(m, "blocks", None), nn.Sequential) and hasattr(m, "patch_embed")
            and hasattr(m, "forward_head") and hasattr(m, "norm") and hasattr(m, "attn_pool"))


def _timm_width(m: nn.Module) -> int:
    return int(getattr(m, "embed_dim", 0) or getattr(m, "num_features", 0) or 0)


def _is_latent_pool(m: Any) -> bool:
    names = ("latent", "q", "kv", "q_norm", "k_norm", "proj", "proj_drop", "num_heads", "head_dim", "scale", "pool")
    return m is not None and all(hasattr(m, n) for n in names)


def _is_hf_vision(m: nn.Module) -> bool:
    """A transformers CLIP/SigLIP vision model: embeddings, ``encoder.layers`` of blocks with ``self_attn``, norm."""
    layers = getattr(getattr(m, "encoder", None), "layers", None)
    return (isinstance(layers, nn.ModuleList) and len(layers) > 0 and hasattr(m, "embeddings")
            and hasattr(m, "post_layernorm") and all(hasattr(getattr(b, "self_attn", None), "config") for b in layers))


def _is_hf_map_head(m: Any) -> bool:
    """SigLIP's ``SiglipMultiheadAttentionPoolingHead`` in the form :class:`ProbedMapHead` re-expresses."""
    mha = getattr(m, "attention", None)
    return (all(hasattr(m, n) for n in ("probe", "layernorm", "mlp")) and isinstance(mha, nn.MultiheadAttention)
            and mha.batch_first and mha.in_proj_weight is not None and mha.bias_k is None and not mha.add_zero_attn)


def _hf_tower(m: nn.Module) -> VitTower:
    """The VitTower of a transformers vision model (CLIP: CLS self-attention; SigLIP: MAP head)."""
    layers = m.encoder.layers
    width = int(getattr(m.config, "hidden_size", 0) or 0)
    head = getattr(m, "head", None) if getattr(m, "use_head", True) else None
    if head is not None:
        if not _is_hf_map_head(head):
            raise UsageError(f"--method legrad: the pooling head {type(head).__name__} of the image tower is not a "
                             "SigLIP attention-pooling head; use gradcam or gscorecam")
        return VitTower(m, "", len(layers), True, 0, 0, family="hf", width=width)
    if getattr(m.embeddings, "class_embedding", None) is None:
        raise UsageError(f"--method legrad: the {type(m).__name__} tower has neither a CLS token nor an "
                         "attention-pooling head; use gradcam or gscorecam")
    return VitTower(m, "", len(layers), False, 1, 1, family="hf", width=width)


def find_vit(backend: Any) -> VitTower:
    """The ViT trunk of ``backend``'s image tower; a one-line UsageError for CNN and unsupported towers."""
    vision = backend.vision_module()
    if _is_hf_vision(vision):
        return _hf_tower(vision)
    for name, m in vision.named_modules():
        if not _is_timm_vit(m):
            continue
        prefix = int(getattr(m, "num_prefix_tokens", 0) or 0)
        pool = getattr(m, "attn_pool", None)
        if pool is not None:
            if not _is_latent_pool(pool):
                raise UsageError(f"--method legrad: the attention pool {type(pool).__name__} of the image tower is "
                                 "not a timm AttentionPoolLatent; use gradcam or gscorecam")
            key_prefix = prefix if getattr(m, "pool_include_prefix", False) else 0
            return VitTower(m, name, len(m.blocks), True, prefix, key_prefix, width=_timm_width(m))
        if not all(hasattr(getattr(b, "attn", None), "attn_drop") for b in m.blocks):
            raise UsageError("--method legrad: the ViT blocks of the image tower do not expose attention "
                             "probabilities (timm Attention with attn_drop); use gradcam or gscorecam")
        return VitTower(m, name, len(m.blocks), False, prefix, prefix, width=_timm_width(m))
    kind = type(vision).__name__
    if "Vision" in kind or hasattr(vision, "encoder"):
        raise UsageError(f"--method legrad supports timm ViT/SigLIP towers (toy-vit, checkpoint ViTs, ConceptCLIP) "
                         f"and transformers CLIP/SigLIP; the {kind} tower is not supported yet: use gradcam, "
                         "layercam or gscorecam")
    raise UsageError(f"--method legrad needs a ViT/SigLIP image tower, but this one is a {kind} (no transformer "
                     f"blocks); {_CNN_HINT}")


def layer_indices(depth: int, k: int) -> list[int]:
    """Indices of the last ``k`` blocks (all blocks for k = 0 or k ≥ depth)."""
    if k < 0:
        raise UsageError(f"--legrad-layers must be >= 0 (0 = all blocks), got {k}")
    k = depth if k == 0 else min(k, depth)
    return list(range(depth - k, depth))


class _Fixed(nn.Module):
    """Stands in for a block stack: returns the given tokens whatever it is fed."""

    def __init__(self, tokens: torch.Tensor) -> None:
        super().__init__()
        self.tokens = tokens

    def forward(self, _x: torch.Tensor) -> torch.Tensor:
        return self.tokens


class _FixedEncoder(nn.Module):
    """Stands in for a transformers encoder: returns the given tokens as its ``last_hidden_state``."""

    def __init__(self, tokens: torch.Tensor) -> None:
        super().__init__()
        self.tokens = tokens

    def forward(self, *_args: Any, **_kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        return BaseModelOutput(last_hidden_state=self.tokens)


class ProbedMapHead(nn.Module):
    """SigLIP ``SiglipMultiheadAttentionPoolingHead`` forward with the per-head probabilities [B, heads, 1, N] kept.

    ``nn.MultiheadAttention`` returns a copy of its weights (head-averaged by default), not the tensor it multiplies,
    so its math (packed in-projection, scaled dot product, softmax, out-projection; eval: no dropout) is written out.
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.inner = head
        self.probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner
        mha: nn.MultiheadAttention = h.attention
        B, N, C = x.shape
        heads = mha.num_heads
        hd = C // heads
        probe = h.probe.repeat(B, 1, 1)
        w, b = mha.in_proj_weight, mha.in_proj_bias
        wq, wk, wv = w.chunk(3)
        bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
        q = F.linear(probe, wq, bq).reshape(B, 1, heads, hd).transpose(1, 2)
        k = F.linear(x, wk, bk).reshape(B, N, heads, hd).transpose(1, 2)
        v = F.linear(x, wv, bv).reshape(B, N, heads, hd).transpose(1, 2)
        probs = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        self.probs = probs
        out = mha.out_proj((probs @ v).transpose(1, 2).reshape(B, 1, C))
        out = out + h.mlp(h.layernorm(out))
        return out[:, 0]


class ProbedPool(nn.Module):
    """timm ``AttentionPoolLatent`` forward (no mask) with the softmax probabilities [B, heads, Q, N] kept."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.inner = pool
        self.probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.inner
        B, N, C = x.shape
        if getattr(p, "pos_embed", None) is not None:
            x = x + p.pos_embed.unsqueeze(0).to(x.dtype)
        L = p.latent.shape[1]
        q = p.q(p.latent.expand(B, -1, -1)).reshape(B, L, p.num_heads, p.head_dim).transpose(1, 2)
        k, v = p.kv(x).reshape(B, N, 2, p.num_heads, p.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = p.q_norm(q), p.k_norm(k)
        probs = ((q * p.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        self.probs = probs
        out = (probs @ v).transpose(1, 2).reshape(B, L, -1)
        out = p.proj_drop(p.proj(out))
        if getattr(p, "mlp", None) is not None:
            out = out + p.mlp(p.norm(out))
        if p.pool == "token":
            return out[:, 0]
        if p.pool == "avg":
            return out.mean(1)
        return out


@contextlib.contextmanager
def swapped(parent: nn.Module, attr: str, module: nn.Module) -> Iterator[nn.Module]:
    """Replace ``parent.<attr>`` by ``module`` for the duration (restored on success and on error)."""
    original = getattr(parent, attr)
    setattr(parent, attr, module)
    try:
        yield module
    finally:
        setattr(parent, attr, original)


@contextlib.contextmanager
def eager_attention(modules: list[nn.Module]) -> Iterator[None]:
    """Switch timm's fused attention (SDPA, no probabilities) off on ``modules``; restored after, also on error."""
    saved = [(m, m.fused_attn) for m in modules if hasattr(m, "fused_attn")]
    try:
        for m, _ in saved:
            m.fused_attn = False
        yield
    finally:
        for m, flag in saved:
            m.fused_attn = flag


@contextlib.contextmanager
def hf_eager_attention(modules: list[nn.Module]) -> Iterator[None]:
    """Set ``config._attn_implementation = "eager"`` on the configs ``modules`` read; restored after, also on error.

    transformers attention modules look their implementation up in ``self.config._attn_implementation`` at every
    forward; only eager returns the probabilities (the vision config has no sub-configs the setter would recurse to).
    """
    configs = {id(m.config): m.config for m in modules if hasattr(m, "config")}
    saved = [(c, c._attn_implementation) for c in configs.values()]
    try:
        for c, _ in saved:
            c._attn_implementation = "eager"
        yield
    finally:
        for c, impl in saved:
            c._attn_implementation = impl


def _block_out(out: Any) -> torch.Tensor:
    """A block's output tokens (transformers 4 layers return a tuple)."""
    return out[0] if isinstance(out, tuple) else out


@dataclass
class _Record:
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)
    probs: dict[int, torch.Tensor] = field(default_factory=dict)


@contextlib.contextmanager
def _record(tower: VitTower, layers: list[int]) -> Iterator[_Record]:
    """Hooks keeping block outputs (and, for CLS/avg towers, the self-attention probabilities) of ``layers``."""
    rec = _Record()
    handles = []
    try:
        for i in layers:
            block = tower.blocks[i]

            def keep_out(_m: nn.Module, _inp: Any, out: Any, i: int = i) -> None:
                rec.tokens[i] = _block_out(out)

            handles.append(block.register_forward_hook(keep_out))
            if tower.map_pool:
                continue
            if tower.family == "hf":
                # (attn_output, attn_weights): eager returns the dropout output, the tensor multiplied with V
                def keep_weights(_m: nn.Module, _inp: Any, out: Any, i: int = i) -> None:
                    if isinstance(out, tuple) and len(out) > 1 and out[1] is not None:
                        rec.probs[i] = out[1]

                handles.append(block.self_attn.register_forward_hook(keep_weights))
            else:
                def keep_probs(_m: nn.Module, inp: Any, i: int = i) -> None:
                    rec.probs[i] = inp[0]

                handles.append(block.attn.attn_drop.register_forward_pre_hook(keep_probs))
        yield rec
    finally:
        for h in handles:
            h.remove()


@dataclass
class LegradOutput:
    """Raw LeGrad maps [B, h, w] (≥ 0, summed over layers) with the forward pass's global features and targets."""

    raw: torch.Tensor
    image_global: torch.Tensor
    targets: torch.Tensor
    layers: list[int]
    tower: VitTower


def _relevance(grad: torch.Tensor | None, like: torch.Tensor, key_prefix: int) -> torch.Tensor:
    """ReLU(∂s/∂P) averaged over heads and queries, at the patch keys: [B, heads, Q, N] → [B, N − prefix]."""
    g = torch.zeros_like(like) if grad is None else grad
    return g.float().clamp(min=0).mean(dim=(1, 2))[:, key_prefix:]


def legrad(
    backend: Any, pixels: torch.Tensor, text_global: torch.Tensor, targets: torch.Tensor | None, *,
    layers: int = 0, empty_text: str | None = EMPTY_PROMPT, threshold: float = EMPTY_THRESHOLD,
) -> LegradOutput:
    """LeGrad maps of a batch; ``targets`` holds one text index per image, or None for the best (highest logit) text.

    ``layers`` = K last blocks (0 = all). ``empty_text`` (None to skip) drives the MAP towers' correction: positions
    where its min-max map exceeds ``threshold`` are zeroed.
    """
    tower = find_vit(backend)
    idx = layer_indices(tower.depth, layers)
    trunk = tower.trunk
    cls_path = not tower.map_pool
    eager: contextlib.AbstractContextManager = contextlib.nullcontext()
    if cls_path and tower.family == "hf":
        eager = hf_eager_attention([tower.blocks[i].self_attn for i in idx])
    elif cls_path:
        eager = eager_attention([tower.blocks[i].attn for i in idx])
    # The input requires grad so that a graph reaches the probabilities even when the backend froze its weights.
    x = pixels.detach().requires_grad_(cls_path)
    with eager, _record(tower, idx) as rec, torch.set_grad_enabled(cls_path):
        image_global, _ = backend.encode_image(x)
    missing = [i for i in idx if i not in rec.tokens or (cls_path and i not in rec.probs)]
    if missing:
        raise XaiclipError(f"legrad: blocks {missing} of the image tower were not run (or ran fused attention)")
    image_global = image_global.detach()
    if targets is None:
        targets = backend.score(image_global, text_global, "logit").argmax(dim=1)
    t_hat = text_global[targets].detach().float()
    e_hat = None
    if tower.map_pool and empty_text is not None:
        with torch.no_grad():
            e_hat = backend.encode_texts([empty_text]).detach().float()[0]
    acc: torch.Tensor | None = None
    acc_empty: torch.Tensor | None = None
    plain = pixels.detach()
    stack_parent, stack_name = tower.stack_attr
    for i in idx:
        tokens = rec.tokens[i]
        probe: ProbedPool | ProbedMapHead | None = None
        if tower.map_pool:
            pool = getattr(trunk, tower.pool_attr)
            probe = ProbedMapHead(pool) if tower.family == "hf" else ProbedPool(pool)
        if probe is not None:
            # Only ∂s/∂P of the pool is needed: the block tokens are constants that carry a graph from here on.
            feed = tokens.detach().requires_grad_(True)
            pool_ctx: contextlib.AbstractContextManager = swapped(trunk, tower.pool_attr, probe)
        else:
            feed = tokens.mean(dim=1, keepdim=True).expand_as(tokens)  # the reference's mean token
            pool_ctx = contextlib.nullcontext()
        stand_in = _FixedEncoder(feed) if tower.family == "hf" else _Fixed(feed)
        with swapped(stack_parent, stack_name, stand_in), pool_ctx, torch.enable_grad():
            g_l, _ = backend.encode_image(plain)
        probs = probe.probs if probe is not None else rec.probs[i]
        if probs is None or not probs.requires_grad:
            raise XaiclipError(f"legrad: the attention probabilities of block {i} are not connected to the score")
        g_l = g_l.float()
        s = (g_l * t_hat).sum(dim=-1)
        (grad,) = torch.autograd.grad(s.sum(), probs, retain_graph=True, allow_unused=True)
        rel = _relevance(grad, probs, tower.key_prefix)
        acc = rel if acc is None else acc + rel
        if e_hat is not None:
            (grad_e,) = torch.autograd.grad((g_l @ e_hat).sum(), probs, retain_graph=True, allow_unused=True)
            rel_e = _relevance(grad_e, probs, tower.key_prefix)
            acc_empty = rel_e if acc_empty is None else acc_empty + rel_e
        del g_l, s, grad, probs
    assert acc is not None
    if acc_empty is not None:
        lo = acc_empty.min(dim=1, keepdim=True).values
        hi = acc_empty.max(dim=1, keepdim=True).values
        acc = torch.where((acc_empty - lo) / (hi - lo + 1e-7) > threshold, torch.zeros_like(acc), acc)
    input_hw = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    gh, gw = token_grid_for(int(acc.shape[1]), grid=backend_grid(backend, input_hw))
    raw = acc.reshape(acc.shape[0], gh, gw).detach()
    return LegradOutput(raw=raw, image_global=image_global, targets=targets, layers=idx, tower=tower)


def layer_label(tower: VitTower, layers: list[int]) -> str:
    """Sidecar name of the explained layers, e.g. ``blocks.0-3+attn_pool`` or ``encoder.layers.0-1+head``."""
    stack = "encoder.layers" if tower.family == "hf" else "blocks"
    base = f"{tower.name}.{stack}" if tower.name else stack
    span = f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else f"{layers[0]}"
    return f"{base}.{span}" + (f"+{tower.pool_attr}" if tower.map_pool else "")
