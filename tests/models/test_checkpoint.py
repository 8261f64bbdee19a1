"""The checkpoint backend: export → reload (same and new process) gives identical features; bad dirs give one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.models.checkpoint import SPEC_FILE, WEIGHTS_FILE, load_checkpoint_backend, sha256_file
from xaiclip_cli.models.registry import load_backend

from .tiny_export import TINY_CNN, TINY_VIT, build_tiny_export

TEXTS = ["a lymphocyte", "a neutrophil", "a photo of a cell"]


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 40, 40, 3), dtype=np.uint8)


def test_backend_facts_and_values(checkpoint_backend, tiny_export_dir: Path) -> None:
    b = checkpoint_backend
    assert (b.embed_dim, b.image_size, b.token_grid, b.num_prefix_tokens, b.context_length) == (8, 32, (4, 4), 0, 16)
    assert b.vision_module() is b.model.visual
    assert b.raw_logit_scale == pytest.approx(2.5) and b.logit_scale == pytest.approx(np.exp(2.5))
    assert b.raw_logit_bias is None and b.logit_bias == 0.0
    prov = b.provenance()
    assert prov["backend"] == "checkpoint" and prov["sha256"] == sha256_file(tiny_export_dir / WEIGHTS_FILE)
    assert prov["preprocess"]["mean"] == [0.5, 0.4, 0.3]
    imgs = _images()
    px = b.preprocess(imgs)
    assert px.shape == (3, 3, 32, 32)
    # Recorded mean/std are applied (bicubic squash resize 40 → 32 then (x - mean) / std).
    from xaiclip_cli.models.preprocess import preprocess_images

    torch.testing.assert_close(px, preprocess_images(imgs, 32, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]))
    ids, mask = b.tokenize(TEXTS)
    assert ids.shape == (3, 16) and int(mask[0].sum()) == 4  # [CLS] a lymphocyte [SEP]
    ids5, _ = b.tokenize(["word " * 40], max_length=5)
    assert ids5.shape == (1, 5)
    with torch.no_grad():
        g, tok = b.encode_image(px)
        t, ttok = b.encode_text(ids, mask)
    assert g.shape == (3, 8) and tok.shape == (3, 16, 8) and t.shape == (3, 8) and ttok.shape == (3, 16, 8)
    torch.testing.assert_close(b.score(g, t, "logit"), np.exp(2.5) * g @ t.t())


def test_reload_in_a_new_process_gives_identical_embeddings(checkpoint_backend, tiny_export_dir: Path,
                                                            tmp_path: Path) -> None:
    imgs = _images()
    np.save(tmp_path / "imgs.npy", imgs)
    code = (
        "import sys, numpy as np, torch\n"
        "torch.set_num_threads(int(sys.argv[4]))\n"
        "from xaiclip_cli.models.registry import load_backend\n"
        "b = load_backend('checkpoint', model=sys.argv[1], device='cpu')\n"
        "with torch.no_grad():\n"
        "    g, tok = b.encode_image(b.preprocess(np.load(sys.argv[2])))\n"
        "    t = b.encode_texts(sys.argv[5:])\n"
        "torch.save({'g': g, 'tok': tok, 't': t}, sys.argv[3])\n"
    )
    out = tmp_path / "emb.pt"
    # Same thread count as this process: bit-identity needs the same reduction order (other tests may change it).
    subprocess.run([sys.executable, "-c", code, str(tiny_export_dir), str(tmp_path / "imgs.npy"), str(out),
                    str(torch.get_num_threads()), *TEXTS], check=True, capture_output=True, timeout=300)
    other = torch.load(out, weights_only=True)
    b = checkpoint_backend
    with torch.no_grad():
        g, tok = b.encode_image(b.preprocess(imgs))
        t = b.encode_texts(TEXTS)
    assert torch.equal(other["g"], g) and torch.equal(other["tok"], tok) and torch.equal(other["t"], t)


def test_cnn_export_run_dir_and_torch_weights(tmp_path: Path) -> None:
    run = tmp_path / "run"
    d = build_tiny_export(run / "export", image=TINY_CNN, logit_bias=-1.5)
    b = load_backend("checkpoint", model=str(run), device="cpu")  # a run dir resolves to RUN/export
    assert b.token_grid == (4, 4) and b.num_prefix_tokens == 0 and b.raw_logit_bias == pytest.approx(-1.5)
    assert type(b.vision_module()).__name__ == "ResNet"
    # model.pt (loaded with weights_only=True) is accepted when there is no safetensors file.
    from safetensors.torch import load_file

    torch.save(load_file(str(d / WEIGHTS_FILE)), d / "model.pt")
    (d / WEIGHTS_FILE).unlink()
    b2 = load_checkpoint_backend(str(d), device="cpu")
    px = b.preprocess(_images(2))
    with torch.no_grad():
        assert torch.equal(b.encode_image(px)[0], b2.encode_image(px)[0])


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.fixture()
def export_copy(tiny_export_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "exp"
    shutil.copytree(tiny_export_dir, d)
    return d


def test_bad_dirs_give_one_line_errors(export_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as e:
        load_checkpoint_backend(str(tmp_path / "nope"))
    assert "not found" in _one_line(e) and "nope" in str(e.value)
    with pytest.raises(UsageError) as e:
        load_checkpoint_backend(None)
    assert "--model" in _one_line(e)
    with pytest.raises(UsageError) as e:
        load_checkpoint_backend(str(export_copy), revision="abc")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError) as e:
        load_checkpoint_backend(str(empty))
    assert SPEC_FILE in _one_line(e)
    spec = export_copy / SPEC_FILE
    good = spec.read_text()
    spec.write_text("{not json")
    with pytest.raises(XaiclipError) as e:  # damaged, not misused: exit 1 naming the file
        load_checkpoint_backend(str(export_copy))
    assert "invalid JSON" in _one_line(e) and str(spec) in _one_line(e) and e.value.exit_code == 1
    spec.write_text(json.dumps({"hello": 1}))
    with pytest.raises(UsageError) as e:
        load_checkpoint_backend(str(export_copy))
    assert "xaiclip-clip" in _one_line(e)
    meta = json.loads(good)
    meta["model"]["embed_dim"] = 12
    spec.write_text(json.dumps(meta))
    with pytest.raises(XaiclipError) as e:
        load_checkpoint_backend(str(export_copy))
    assert "shape mismatch" in _one_line(e) and "image_proj.weight" in str(e.value)
    meta["model"]["embed_dim"] = 8
    meta["model"]["image_tower"]["name"] = "no_such_model_xyz"
    spec.write_text(json.dumps(meta))
    with pytest.raises(UsageError) as e:
        load_checkpoint_backend(str(export_copy))
    assert "cannot build" in _one_line(e)
    spec.write_text(good)
    (export_copy / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(XaiclipError) as e:
        load_checkpoint_backend(str(export_copy))
    assert "safetensors" in _one_line(e)
    (export_copy / WEIGHTS_FILE).unlink()
    with pytest.raises(UsageError) as e:
        load_checkpoint_backend(str(export_copy))
    assert WEIGHTS_FILE in _one_line(e)


def test_missing_tokenizer_and_pickles_are_refused(export_copy: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (export_copy / f).unlink()
    with pytest.raises(UsageError) as e:
        load_checkpoint_backend(str(export_copy))
    assert "tokenizer" in _one_line(e)
    # A pickled object in model.pt is never unpickled (weights_only=True refuses it).
    (export_copy / WEIGHTS_FILE).unlink()
    torch.save({"model": {"x": object()}}, export_copy / "model.pt")
    with pytest.raises(XaiclipError) as e:
        load_checkpoint_backend(str(export_copy))
    assert "safely" in _one_line(e)


def test_vit_with_class_token_has_one_prefix_token(tmp_path: Path) -> None:
    image = {**TINY_VIT, "kwargs": {**TINY_VIT["kwargs"], "class_token": True, "global_pool": "token"}}
    b = load_checkpoint_backend(str(build_tiny_export(tmp_path / "e", image=image)), device="cpu")
    assert b.num_prefix_tokens == 1 and b.token_grid == (4, 4)
    with torch.no_grad():
        _, tok = b.encode_image(b.preprocess(_images(1)))
    assert tok.shape == (1, 16, 8)


def test_cnn_with_attention_pool_round_trips_through_an_export(tmp_path: Path) -> None:
    d = build_tiny_export(tmp_path / "exp", image={**TINY_CNN, "pool": "attn", "pool_heads": 2})
    meta = json.loads((d / SPEC_FILE).read_text())
    assert meta["model"]["image_tower"]["pool"] == "attn" and meta["model"]["image_tower"]["pool_heads"] == 2
    from safetensors.torch import load_file

    state = load_file(str(d / WEIGHTS_FILE))
    assert tuple(state["image_pool.pos_embed"].shape) == (17, 16)  # 4x4 map + the mean token
    b = load_checkpoint_backend(str(d), device="cpu")
    # The pool sits outside the tower: the CAM tower is still the bare ResNet and its grid the layer4 map.
    assert type(b.vision_module()).__name__ == "ResNet" and b.token_grid == (4, 4)
    torch.testing.assert_close(b.model.image_pool.pos_embed.detach(), state["image_pool.pos_embed"])
    px = b.preprocess(_images(2))
    with torch.no_grad():
        g, tok = b.encode_image(px)
        expected = b.model.image_proj(b.model.image_pool(b.model.visual.forward_features(px)))
    torch.testing.assert_close(g, torch.nn.functional.normalize(expected, dim=-1))
    assert tok.shape == (2, 16, 8)
    # Weights without the pool do not match a spec that asks for one: one line, named file.
    (d / WEIGHTS_FILE).unlink()
    from safetensors.torch import save_file

    save_file({k: v for k, v in state.items() if not k.startswith("image_pool")}, str(d / WEIGHTS_FILE))
    with pytest.raises(XaiclipError, match="missing") as exc:
        load_checkpoint_backend(str(d), device="cpu")
    assert "\n" not in str(exc.value)
