"""ClipModel: image/text towers, tokens vs pooled features, projections, scalars (tiny random towers, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xaiclip_cli.models.clip_model import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, ClipModel

TEXT = {"config": {"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16}}


def spec(image: dict, pooling: str = "cls", embed_dim: int = 8) -> dict:
    """A tiny ClipModel spec around ``image``."""
    return {"image_tower": image, "text_tower": {**TEXT, "pooling": pooling}, "embed_dim": embed_dim}


RESNET = {"name": "resnet10t", "image_size": 32,
          "kwargs": {"channels": [8, 8, 16, 16], "stem_width": 8, "output_stride": 8}}
VIT_MAP = {"name": "vit_base_patch16_224", "image_size": 32,
           "kwargs": {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2, "class_token": False,
                      "global_pool": "map"}}
VIT_CLS = {"name": "vit_base_patch16_224", "image_size": 32,
           "kwargs": {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}}


def build(image: dict, **kw) -> ClipModel:
    torch.manual_seed(0)
    return ClipModel(spec(image, **kw)).eval()


def test_cnn_tokens_are_the_projected_feature_map_and_average_to_the_global() -> None:
    m = build(RESNET)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        glob, tokens = m.encode_image(x)
        raw_glob, _ = m.encode_image(x, normalize=False)
        fmap = m.visual.forward_features(x)
    b, c, h, w = fmap.shape
    expected = fmap.flatten(2).transpose(1, 2) @ m.image_proj.weight.t()
    assert tokens.shape == (2, h * w, 8)
    torch.testing.assert_close(tokens, expected)
    # Row-major flattening: token r*w + c is position (r, c) of the map.
    torch.testing.assert_close(tokens[1, 1 * w + 0], m.image_proj(fmap[1, :, 1, 0]))
    # Average pooling is linear: the mean projected token is the projected pooled feature.
    torch.testing.assert_close(tokens.mean(1), raw_glob, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(glob.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(glob, F.normalize(raw_glob, dim=-1))
    assert m.num_prefix_tokens == 0


@pytest.mark.parametrize(("image", "prefix"), [(VIT_MAP, 0), (VIT_CLS, 1)])
def test_vit_tokens_drop_prefix_tokens(image: dict, prefix: int) -> None:
    m = build(image)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        glob, tokens = m.encode_image(x)
        seq = m.visual.forward_features(x)
        pooled = m.visual.forward_head(seq, pre_logits=True)
    assert m.num_prefix_tokens == prefix
    assert seq.shape[1] == 16 + prefix
    assert tokens.shape == (2, 16, 8)
    torch.testing.assert_close(tokens, m.image_proj(seq[:, prefix:]))
    torch.testing.assert_close(glob, F.normalize(m.image_proj(pooled), dim=-1))


def test_swin_nhwc_map_is_flattened_row_major() -> None:
    image = {"name": "swin_tiny_patch4_window7_224", "image_size": 32,
             "kwargs": {"window_size": 2, "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 1]}}
    m = build(image)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fmap = m.visual.forward_features(x)  # [B,H,W,C]
        _, tokens = m.encode_image(x)
    h, w = fmap.shape[1:3]
    assert tokens.shape == (1, h * w, 8)
    torch.testing.assert_close(tokens[0, 1], m.image_proj(fmap[0, 0, 1]))


def test_text_cls_and_masked_mean_pooling() -> None:
    ids = torch.tensor([[2, 5, 6, 3, 0, 0], [2, 7, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    m = build(RESNET, pooling="cls")
    with torch.no_grad():
        glob, tokens = m.encode_text(ids, mask)
        hidden = m.text(input_ids=ids, attention_mask=mask).last_hidden_state
    assert tokens.shape == (2, 6, 8)
    torch.testing.assert_close(tokens, m.text_proj(hidden))
    torch.testing.assert_close(glob, F.normalize(m.text_proj(hidden[:, 0]), dim=-1))
    mm = build(RESNET, pooling="mean")
    with torch.no_grad():
        g_mean, _ = mm.encode_text(ids, mask)
        g_short, _ = mm.encode_text(ids[:, :4], mask[:, :4])  # less padding: same masked mean
        h = mm.text(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = (h[0, :4].mean(0)) @ mm.text_proj.weight.t()
    torch.testing.assert_close(g_mean[0], F.normalize(expected, dim=-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_mean, g_short, atol=1e-5, rtol=1e-4)


def test_scalars_projections_and_weight_decay_groups() -> None:
    from timm.optim import create_optimizer_v2

    m = build(RESNET)
    assert m.image_proj.bias is None and m.text_proj.bias is None
    assert math.isclose(float(m.logit_scale.detach()), LOGIT_SCALE_INIT, rel_tol=1e-6)
    assert math.isclose(float(m.scale().detach()), 1 / 0.07, rel_tol=1e-5)
    assert m.logit_bias is None
    with torch.no_grad():
        m.logit_scale.fill_(9.0)
    assert math.isclose(float(m.scale().detach()), 100.0, rel_tol=1e-5)
    m.clamp_logit_scale()
    assert math.isclose(float(m.logit_scale.detach()), LOGIT_SCALE_MAX, rel_tol=1e-6)
    opt = create_optimizer_v2(m, opt="adamw", lr=1e-3, weight_decay=0.1)
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(m.logit_scale) in no_decay
    assert id(m.image_proj.weight) not in no_decay
    assert all(id(p) in no_decay for n, p in m.named_parameters() if n.endswith(".bias"))
    with_bias = ClipModel({**spec(RESNET), "logit_bias_init": -2.0})
    assert float(with_bias.logit_bias.detach()) == -2.0
    out = with_bias.eval()(torch.randn(1, 3, 32, 32), torch.tensor([[2, 5, 3]]))
    assert out["image_features"].shape == (1, 8) and out["text_token_features"].shape == (1, 3, 8)


@pytest.mark.parametrize(
    "image",
    [
        {"name": "convnext_atto", "image_size": 32, "kwargs": {"dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1]}},
        {"name": "efficientnet_b0", "image_size": 32, "kwargs": {}},
        {"name": "starnet_s050", "image_size": 32, "kwargs": {}},
    ],
    ids=["convnext", "efficientnet", "starnet"],
)
def test_pooled_cnn_families_tokens_average_to_the_global(image: dict) -> None:
    m = build(image)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        glob, tokens = m.encode_image(x)
        raw_glob, _ = m.encode_image(x, normalize=False)
    assert m.num_prefix_tokens == 0 and tokens.shape[0] == 2 and tokens.shape[-1] == 8
    # Global average pooling (ConvNeXt: its post-pool norm applied per position) makes the mean token the global.
    torch.testing.assert_close(tokens.mean(1), raw_glob, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(glob, F.normalize(raw_glob, dim=-1))


RESNET_ATTN = {**RESNET, "pool": "attn", "pool_heads": 2}


def test_attn_pool_is_sized_from_image_size_and_output_stride() -> None:
    m = build(RESNET_ATTN)
    # 32 px / output stride 8 = a 4x4 map: 16 positions + the mean token carry a learned position embedding.
    assert m.image_pool.feat_size == (4, 4) and m.image_pool.num_heads == 2
    assert tuple(m.image_pool.pos_embed.shape) == (17, 16)
    assert m.visual.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (4, 4)
    big = build({**RESNET_ATTN, "image_size": 64, "kwargs": {**RESNET["kwargs"], "output_stride": 16}})
    assert big.image_pool.feat_size == (4, 4)
    default_heads = build({**RESNET_ATTN, "pool_heads": None})
    assert default_heads.image_pool.num_heads == 1  # width 16 < 64: one head
    assert "image_pool.pos_embed" in m.no_weight_decay()
    assert not any(n.startswith("image_pool") for n, _ in m.visual.named_modules())


@pytest.mark.parametrize("query", ["mean", "learned"])
def test_attn_pool_global_is_the_attention_pool_and_tokens_follow_the_maskclip_rule(query: str) -> None:
    m = build({**RESNET_ATTN, "pool_query": query})
    x = torch.randn(2, 3, 32, 32)
    pool = m.image_pool
    with torch.no_grad():
        if query == "learned":
            pool.cls_token.normal_()  # timm initialises it to zero; any value must be used as the query token
        raw_glob, tokens = m.encode_image(x, normalize=False)
        fmap = m.visual.forward_features(x)
        b, c, h, w = fmap.shape
        # CLIP queries with the mean token, a MAP-style pool with a learned one.
        first = fmap.flatten(2).mean(2, keepdim=True) if query == "mean" else pool.cls_token.t().expand(b, c, 1)
        seq = torch.cat([first, fmap.flatten(2)], 2).transpose(1, 2) + pool.pos_embed
        q, k, v = (seq @ pool.qkv.weight.t() + pool.qkv.bias).split(c, dim=-1)
        # Hand computation of CLIP's AttentionPool2d: the mean token queries every token, per head.
        heads, hd = pool.num_heads, c // pool.num_heads
        qh = q[:, :1].reshape(b, 1, heads, hd).transpose(1, 2)
        kh, vh = (t.reshape(b, h * w + 1, heads, hd).transpose(1, 2) for t in (k, v))
        att = (qh @ kh.transpose(-1, -2) / hd**0.5).softmax(-1)
        pooled = (att @ vh).transpose(1, 2).reshape(b, c)
        torch.testing.assert_close(raw_glob, m.image_proj(pooled), atol=1e-5, rtol=1e-4)
        # Tokens: value path of every position (its own position embedding), then the projection.
        torch.testing.assert_close(tokens, m.image_proj(v[:, 1:]), atol=1e-5, rtol=1e-4)
        assert tokens.shape == (2, h * w, 8)


def test_attn_pool_with_uniform_attention_averages_the_tokens() -> None:
    m = build(RESNET_ATTN)
    pool = m.image_pool
    c = pool.in_features
    with torch.no_grad():
        pool.qkv.weight[:c].zero_()  # no query: every position gets the same attention weight
        pool.qkv.bias[:c].zero_()
        pool.pos_embed[0] = pool.pos_embed[1:].mean(0)  # the mean token's value is then the mean value
        x = torch.randn(2, 3, 32, 32)
        raw_glob, tokens = m.encode_image(x, normalize=False)
        torch.testing.assert_close(tokens.mean(1), raw_glob, atol=1e-5, rtol=1e-4)
        # The tokens are not all alike (else the check above would be vacuous).
        assert float((tokens - tokens.mean(1, keepdim=True)).abs().max()) > 1e-3
        # A different input size resamples the position embedding for the pool and the tokens alike.
        raw_big, tokens_big = m.encode_image(torch.randn(1, 3, 48, 48), normalize=False)
        assert tokens_big.shape == (1, 36, 8)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        ({**RESNET_ATTN, "pool": "max"}, "must be 'head' or 'attn'"),
        ({**RESNET_ATTN, "pool_heads": 3}, "must divide"),
        ({**RESNET_ATTN, "pool_query": "max"}, "must be 'mean' or 'learned'"),
        ({**VIT_MAP, "pool": "attn"}, "needs a CNN tower"),
        ({**{k: v for k, v in RESNET_ATTN.items() if k != "image_size"}}, "needs image_size"),
    ],
)
def test_attn_pool_bad_specs(image: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClipModel(spec(image))
