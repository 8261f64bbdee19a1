"""hf backend: tiny transformers CLIP/SigLIP against the models' own forward (the oracle), loading errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.models import hub
from xaiclip_cli.models.hf import HFClipBackend, image_side, load_hf, to_hwc_arrays

PROMPTS = ["a photo of a cell", "blood", "cell of cells"]


def _pixels(backend: HFClipBackend, n: int = 2, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return backend.preprocess(rng.integers(0, 256, (n, backend.image_size, backend.image_size, 3), dtype=np.uint8))


def test_clip_facts(hf_clip_backend: HFClipBackend) -> None:
    b = hf_clip_backend
    assert (b.model_type, b.image_size, b.token_grid, b.embed_dim) == ("clip", 56, (4, 4), 24)
    assert (b.num_prefix_tokens, b.score_family, b.context_length, b.raw_logit_bias) == (1, "softmax", 77, None)
    assert "encoder.layers.1.layer_norm1" in dict(b.vision_module().named_modules())


def test_siglip_facts(hf_siglip_backend: HFClipBackend) -> None:
    b = hf_siglip_backend
    assert (b.model_type, b.image_size, b.token_grid, b.embed_dim) == ("siglip", 56, (4, 4), 32)
    assert (b.num_prefix_tokens, b.score_family, b.context_length) == (0, "sigmoid", 64)
    assert b.raw_logit_scale == pytest.approx(2.3) and b.raw_logit_bias == pytest.approx(-3.5)
    assert b.logit_bias == pytest.approx(-3.5)
    assert "post_layernorm" in dict(b.vision_module().named_modules())


def test_clip_matches_the_model_forward(hf_clip_backend: HFClipBackend) -> None:
    b = hf_clip_backend
    px = _pixels(b)
    ids, mask = b.tokenize(PROMPTS)
    with torch.no_grad():
        out = b.model(input_ids=ids, attention_mask=mask, pixel_values=px)
        g, tokens = b.encode_image(px)
        t, ttok = b.encode_text(ids, mask)
        hidden = b.model.vision_model(pixel_values=px).last_hidden_state
        all_tokens = b.model.visual_projection(b.model.vision_model.post_layernorm(hidden))
    torch.testing.assert_close(g, out.image_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(t, out.text_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.score(g, t, "logit"), out.logits_per_image, atol=1e-5, rtol=0)
    # Tokens are the projected patch tokens without CLS; the projected CLS itself is the (unnormalised) global.
    torch.testing.assert_close(tokens, all_tokens[:, 1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.nn.functional.normalize(all_tokens[:, 0], dim=-1), g, atol=1e-6, rtol=0)
    assert ttok.shape == (3, ids.shape[1], 24)


def test_siglip_matches_the_model_forward(hf_siglip_backend: HFClipBackend) -> None:
    b = hf_siglip_backend
    px = _pixels(b)
    ids, mask = b.tokenize(PROMPTS)
    assert ids.shape == (3, 64)  # SigLIP pools the last position: always padded to max_length
    assert mask[1].sum() == 3  # [CLS] blood [SEP]
    with torch.no_grad():
        out = b.model(input_ids=ids, pixel_values=px)  # as trained: no attention mask
        g, tokens = b.encode_image(px)
        t, _ = b.encode_text(ids, mask)
        hidden = b.model.vision_model(pixel_values=px).last_hidden_state
    torch.testing.assert_close(g, out.image_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(t, out.text_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.score(g, t, "logit"), out.logits_per_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.score(g, t, "sigmoid"), torch.sigmoid(out.logits_per_image), atol=1e-6, rtol=0)
    torch.testing.assert_close(tokens, hidden, atol=1e-6, rtol=0)  # no CLS; post_layernorm already applied


def test_siglip_ignores_a_longest_padding_request(hf_siglip_backend: HFClipBackend) -> None:
    ids, _ = hf_siglip_backend.tokenize(["blood"], padding="longest")
    assert ids.shape == (1, 64)


def test_clip_longest_vs_max_length_padding(hf_clip_backend: HFClipBackend) -> None:
    short, m1 = hf_clip_backend.tokenize(["blood"])
    full, m2 = hf_clip_backend.tokenize(["blood"], padding="max_length")
    assert short.shape[1] < 77 and full.shape == (1, 77)
    with torch.no_grad():
        torch.testing.assert_close(hf_clip_backend.encode_text(short, m1)[0], hf_clip_backend.encode_text(full, m2)[0],
                                   atol=1e-5, rtol=0)


def test_clip_preprocess_uses_the_processor_crop(hf_clip_backend: HFClipBackend) -> None:
    """A 56x112 image is resized (short side 56) and centre-cropped, as CLIPImageProcessor does."""
    img = np.zeros((56, 112, 3), np.uint8)
    img[:, 28:84] = 255  # the centre square is white, the sides black
    px = hf_clip_backend.preprocess(img)
    white = (1 - np.array(hf_clip_backend.image_processor.image_mean)) / np.array(
        hf_clip_backend.image_processor.image_std)
    torch.testing.assert_close(px[0, :, 10, 28], torch.tensor(white, dtype=torch.float32), atol=1e-5, rtol=0)


def test_image_side_reads_size_dicts() -> None:
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    assert image_side(CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 48, "width": 48}), 7) == 48
    assert image_side(CLIPImageProcessor(size={"shortest_edge": 64}, do_center_crop=False), 7) == 64
    assert image_side(SiglipImageProcessor(size={"height": 40, "width": 40}), 7) == 40
    assert image_side(object(), 7) == 7


def test_processor_and_config_sizes_must_agree(hf_clip_dir: Path, tmp_path: Path) -> None:
    import shutil

    from transformers import CLIPImageProcessor

    d = shutil.copytree(hf_clip_dir, tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}).save_pretrained(d)
    with pytest.raises(XaiclipError, match="processor size 48"):
        load_hf(str(d), device="cpu")


def test_image_inputs_pil_tensor_and_bad(hf_siglip_backend: HFClipBackend) -> None:
    from PIL import Image

    u8 = np.random.default_rng(3).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    a = hf_siglip_backend.preprocess(u8)
    torch.testing.assert_close(hf_siglip_backend.preprocess([Image.fromarray(u8)]), a, atol=0, rtol=0)
    chw = torch.from_numpy(u8).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(hf_siglip_backend.preprocess(chw[None]), a, atol=1e-5, rtol=0)
    rgba = np.concatenate([u8, np.full((56, 56, 1), 7, np.uint8)], axis=-1)
    torch.testing.assert_close(hf_siglip_backend.preprocess(rgba), a, atol=0, rtol=0)
    with pytest.raises(UsageError, match="dtype"):
        to_hwc_arrays(u8.astype(np.int64))
    with pytest.raises(UsageError, match="shape"):
        to_hwc_arrays(np.zeros((4, 4, 5), np.uint8))


def test_provenance_hashes_the_local_dir(hf_clip_backend: HFClipBackend, hf_clip_dir: Path) -> None:
    prov = hf_clip_backend.provenance()
    assert prov["backend"] == "hf" and prov["model_type"] == "clip"
    assert prov["model_revision"] == hub.dir_content_hash(hf_clip_dir)
    assert prov["processor_config"]["crop_size"] == {"height": 56, "width": 56}
    assert prov["tokenizer_config"]["max_length"] == 77


def test_dir_content_hash_tracks_content(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"\x00\x01")
    h1 = hub.dir_content_hash(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"junk")
    assert hub.dir_content_hash(tmp_path) == h1  # caches do not count
    (tmp_path / "a.txt").write_text("two")
    assert hub.dir_content_hash(tmp_path) != h1


def test_unsupported_model_type_is_refused(tmp_path: Path) -> None:
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(UsageError, match="model_type 'bert'"):
        load_hf(str(tmp_path), device="cpu")


def test_missing_model_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs --model"):
        load_hf(None, device="cpu")
    with pytest.raises(UsageError, match="not found"):
        load_hf(str(tmp_path / "absent"), device="cpu")
    with pytest.raises(UsageError, match="is a file"):
        (tmp_path / "f.bin").write_bytes(b"")
        load_hf(str(tmp_path / "f.bin"), device="cpu")
    with pytest.raises(XaiclipError) as err:  # an empty directory: no config.json
        load_hf(str(tmp_path), device="cpu")
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    if os.environ.get("HF_HUB_OFFLINE") == "1":  # set by tests/conftest.py
        with pytest.raises(XaiclipError, match="openai/clip-vit-base-patch16") as err:
            load_hf("openai/clip-vit-base-patch16", device="cpu")
        assert "HF_HUB_OFFLINE" in str(err.value) and "\n" not in str(err.value)


def test_registry_reaches_the_hf_backend(hf_siglip_dir: Path) -> None:
    from xaiclip_cli.models.registry import load_backend

    b = load_backend("hf", model=str(hf_siglip_dir), device="cpu")
    assert isinstance(b, HFClipBackend) and b.model_type == "siglip"
