"""ConceptCLIP backend: the remote model's contract (conceptclip.md §6) on the replica, loading rules and errors."""

from __future__ import annotations

import json
import logging
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.models import hub
from xaiclip_cli.models.conceptclip import (
    DEFAULT_MODEL,
    DEFAULT_REVISION,
    DEFAULT_REVISIONS,
    ConceptCLIPBackend,
    load_conceptclip,
)

FORWARD_KEYS = {"image_features", "text_features", "image_token_features", "text_token_features", "logit_scale",
                "concept_logit_scale", "logit_bias", "concept_logit_bias"}
FAKE_TOKEN = "hf_FAKEtokenXaiclipTest0123456789"


def _pixels(backend: ConceptCLIPBackend, n: int = 2, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return backend.preprocess(rng.integers(0, 256, (n, backend.image_size, backend.image_size, 3), dtype=np.uint8))


# --- the raw remote model (§2, §6) -------------------------------------------------------------------------------
def test_replica_facts(conceptclip_backend: ConceptCLIPBackend) -> None:
    b = conceptclip_backend
    assert (b.image_size, b.token_grid, b.embed_dim, b.num_prefix_tokens) == (56, (4, 4), 32, 0)
    assert b.score_family == "softmax" and b.context_length == 77
    names = dict(b.vision_module().named_modules())
    assert "trunk.norm" in names  # cam.md §2: ConceptCLIP's default CAM layer
    assert b.model.image_proj[2].out_features == b.embed_dim


def test_encode_normalize_only_touches_cls(conceptclip_backend: ConceptCLIPBackend) -> None:
    m, px = conceptclip_backend.model, _pixels(conceptclip_backend)
    ids, _ = conceptclip_backend.tokenize(["a photo of a cell", "blood"])
    with torch.no_grad():
        c0, t0 = m.encode_image(px, normalize=False)
        c1, t1 = m.encode_image(px, normalize=True)
        d0, u0 = m.encode_text(ids, normalize=False)
        d1, u1 = m.encode_text(ids, normalize=True)
    assert t0.shape == (2, 16, 32) and u0.shape == (2, ids.shape[1], 16)
    assert torch.equal(t0, t1) and torch.equal(u0, u1)
    torch.testing.assert_close(c1, c0 / c0.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(d1.norm(dim=-1), torch.ones(2), atol=1e-4, rtol=0)
    assert m.image_proj(t0).shape == (2, 16, 32) and m.text_proj(u0).shape == (2, ids.shape[1], 32)


def test_forward_keys_and_values(conceptclip_backend: ConceptCLIPBackend) -> None:
    b = conceptclip_backend
    m, px = b.model, _pixels(b)
    ids, mask = b.tokenize(["a photo of a cell", "small red cells"])
    with torch.no_grad():
        out = m(pixel_values=px, input_ids=ids)
        g, tok = b.encode_image(px)
        h, ttok = b.encode_text(ids, mask)
    assert set(out) == FORWARD_KEYS
    torch.testing.assert_close(out["image_features"], g, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["image_token_features"], tok, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["text_features"], h, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["text_token_features"], ttok, atol=1e-6, rtol=0)
    assert float(out["logit_scale"]) == pytest.approx(np.exp(b.raw_logit_scale), rel=1e-6)
    assert float(out["concept_logit_scale"]) == pytest.approx(b.concept_logit_scale, rel=1e-6)
    assert float(out["logit_bias"].detach()) == pytest.approx(b.raw_logit_bias)
    assert float(out["concept_logit_bias"].detach()) == pytest.approx(b.raw_concept_logit_bias)
    with torch.no_grad():
        img_only, txt_only = m(pixel_values=px), m(input_ids=ids)
    assert img_only["text_features"] is None and img_only["text_token_features"] is None
    assert txt_only["image_features"] is None and txt_only["image_token_features"] is None


def test_four_scalar_parameters_round_trip(conceptclip_backend: ConceptCLIPBackend) -> None:
    params = dict(conceptclip_backend.model.named_parameters())
    for name in ("logit_scale", "logit_bias", "concept_logit_scale", "concept_logit_bias"):
        assert params[name].numel() == 1
    b = conceptclip_backend
    assert (b.raw_logit_scale, b.raw_logit_bias) == (pytest.approx(2.6592), pytest.approx(-10.0))
    assert (b.raw_concept_logit_scale, b.raw_concept_logit_bias) == (pytest.approx(2.6592), pytest.approx(-10.0))
    assert b.logit_scale == pytest.approx(np.exp(2.6592)) and b.logit_bias == pytest.approx(-10.0)


def test_loaded_weights_equal_the_saved_ones(conceptclip_backend: ConceptCLIPBackend,
                                             conceptclip_replica_dir: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(conceptclip_replica_dir / "model.safetensors"))
    state = conceptclip_backend.model.state_dict()
    assert set(saved) <= set(state)
    for k, v in saved.items():
        assert torch.equal(state[k].cpu(), v), k


def test_processor_contract(conceptclip_backend: ConceptCLIPBackend) -> None:
    proc = conceptclip_backend.processor
    u8 = np.random.default_rng(1).integers(0, 256, (2, 30, 40, 3), dtype=np.uint8)
    px = proc(images=list(u8), return_tensors="pt")["pixel_values"]
    assert px.shape == (2, 3, 56, 56) and px.min() >= -1 and px.max() <= 1
    long = " ".join(["cell"] * 200)
    assert proc(text=[long], truncation=True, max_length=77)["input_ids"].shape == (1, 77)
    assert proc(text=[long], truncation=True)["input_ids"].shape == (1, 202)  # no model_max_length: no truncation
    assert proc.tokenizer.pad_token_id == 0
    # The backend never mutates the shared processor (float input uses do_rescale=False per call).
    conceptclip_backend.preprocess(u8.astype(np.float32) / 255)
    assert proc.image_processor.do_rescale is True


def test_tokenize_padding_modes(conceptclip_backend: ConceptCLIPBackend) -> None:
    ids, mask = conceptclip_backend.tokenize(["a photo of a cell", "blood"])
    assert ids[0].tolist() == [2, 5, 6, 7, 5, 10, 3] and ids[1].tolist() == [2, 12, 3, 0, 0, 0, 0]
    assert mask.sum(dim=1).tolist() == [7, 3]
    full, _ = conceptclip_backend.tokenize(["blood"], padding="max_length")
    assert full.shape == (1, 77)
    with pytest.raises(UsageError, match="padding"):
        conceptclip_backend.tokenize(["blood"], padding="longest_first")


def test_provenance_uses_the_local_content_hash(conceptclip_backend: ConceptCLIPBackend,
                                               conceptclip_replica_dir: Path) -> None:
    prov = conceptclip_backend.provenance()
    assert prov["model_revision"] == hub.dir_content_hash(conceptclip_replica_dir)
    assert prov["model_revision"].startswith("sha256:") and prov["requested_revision"] is None
    assert prov["processor_config"]["image_mean"] == [0.5] * 3 and prov["processor_config"]["resample"] == 3
    assert prov["tokenizer_config"]["max_length"] == 77 and prov["trust_remote_code"] is True
    assert prov["scalars"]["logit_bias"] == pytest.approx(-10.0)


def test_grid_falls_back_to_a_dummy_forward(conceptclip_backend: ConceptCLIPBackend) -> None:
    """A remote model without timm's ``visual.trunk.patch_embed`` still gets its grid (from the token count)."""

    class NoTrunk(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def encode_image(self, px: torch.Tensor, normalize: bool = False):
            return self.inner.encode_image(px, normalize)

    stub = types.SimpleNamespace(model=NoTrunk(conceptclip_backend.model), image_size=56)
    assert ConceptCLIPBackend._grid(stub) == (4, 4)


def test_trunk_norm_gets_patch_gradients(conceptclip_backend: ConceptCLIPBackend) -> None:
    """cam.md §2: the default CAM layer ``trunk.norm`` sees non-zero gradients at every patch token."""
    b = conceptclip_backend
    layer = dict(b.vision_module().named_modules())["trunk.norm"]
    acts: list[torch.Tensor] = []

    def keep(_module, _inputs, out: torch.Tensor) -> None:
        out.retain_grad()
        acts.append(out)

    handle = layer.register_forward_hook(keep)
    try:
        g, _ = b.encode_image(_pixels(b, 1))
        t = b.encode_texts(["a photo of a cell"]).detach()
        b.score(g, t, "logit")[0, 0].backward()
    finally:
        handle.remove()
    assert acts[0].shape == (1, 16, 32)
    assert (acts[0].grad.abs().sum(dim=-1) > 0).all()


def test_bf16_autocast_path(conceptclip_backend: ConceptCLIPBackend) -> None:
    """The GPU path (bf16 autocast) exercised on the CPU: fp32 outputs, unit norms, close to fp32 features."""
    b = conceptclip_backend
    px = _pixels(b, 2, seed=3)
    ids, mask = b.tokenize(["a photo of a cell", "blood"])
    with torch.no_grad():
        g32, t32 = b.encode_image(px)
        h32, _ = b.encode_text(ids, mask)
        b.amp_dtype = torch.bfloat16
        try:
            g16, t16 = b.encode_image(px)
            h16, _ = b.encode_text(ids, mask)
            assert b.provenance()["compute_dtype"] == "bfloat16-autocast"
        finally:
            b.amp_dtype = None
    assert g16.dtype == t16.dtype == h16.dtype == torch.float32
    torch.testing.assert_close(g16.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    assert torch.nn.functional.cosine_similarity(g16, g32).min() > 0.99
    assert torch.nn.functional.cosine_similarity(h16, h32).min() > 0.99
    assert b.provenance()["compute_dtype"] == "float32"


def test_real_size_replica_has_the_real_shapes() -> None:
    """real_size=True sizes (built on the meta device: no memory): 543 M params, 428.2 M vision, 729 tokens."""
    from .conceptclip_replica import REAL, REAL_TEXT, _templates

    config_cls, model_cls, _ = _templates()
    with torch.device("meta"):
        m = model_cls(config_cls(text_cfg=dict(REAL_TEXT), **REAL))
        cls, tokens = m.encode_image(torch.empty(1, 3, 384, 384))
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(542.87e6, rel=1e-3)
    assert sum(p.numel() for p in m.visual.parameters()) == pytest.approx(428.2e6, rel=1e-3)
    assert cls.shape == (1, 1152) and tokens.shape == (1, 729, 1152)
    assert m.text_proj[0].in_features == 768 and m.image_proj[2].out_features == 1152
    assert len(m.visual.trunk.blocks) == 27 and m.visual.trunk.num_prefix_tokens == 0


# --- loading rules and errors (§4) ---------------------------------------------------------------------------------
def test_default_model_gets_the_pinned_revision(tmp_path: Path) -> None:
    ref = hub.resolve_model_ref(DEFAULT_MODEL, None, default_revisions=DEFAULT_REVISIONS)
    assert (ref.model_id, ref.revision, ref.local_dir) == (DEFAULT_MODEL, DEFAULT_REVISION, None)
    assert hub.resolve_model_ref(DEFAULT_MODEL, "main", default_revisions=DEFAULT_REVISIONS).revision == "main"
    assert hub.resolve_model_ref("other/model", None, default_revisions=DEFAULT_REVISIONS).revision is None
    local = hub.resolve_model_ref(str(tmp_path), None, default_revisions=DEFAULT_REVISIONS)
    assert local.local_dir == tmp_path.resolve() and local.revision is None
    with pytest.raises(UsageError, match="local directory"):
        hub.resolve_model_ref(str(tmp_path), "abc")


@pytest.mark.parametrize("missing", ["/nonexistent/xaiclip/conceptclip", "./no_such_dir", "~/no/such/model/dir"])
def test_missing_local_dir_is_a_one_line_usage_error(missing: str) -> None:
    with pytest.raises(UsageError) as err:
        load_conceptclip(missing, device="cpu")
    msg = str(err.value)
    assert missing in msg and "not found" in msg and "\n" not in msg


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 (tests/conftest.py)")
def test_offline_hub_id_fails_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    with pytest.raises(XaiclipError) as err:
        load_conceptclip(None, device="cpu")
    msg = str(err.value)
    assert DEFAULT_MODEL in msg and DEFAULT_REVISION in msg and "HF_HUB_OFFLINE" in msg
    assert "\n" not in msg and FAKE_TOKEN not in msg
    assert not isinstance(err.value, UsageError)


def test_gated_and_other_errors_map_to_one_line() -> None:
    ref = hub.ModelRef(DEFAULT_MODEL, None, DEFAULT_REVISION)
    gated = OSError("You are trying to access a gated repo.\nMake sure to have access to it at https://...")
    msg = str(hub.load_error(gated, ref))
    assert "accept the terms" in msg and "HF_TOKEN" in msg and DEFAULT_MODEL in msg
    forbidden = OSError("403 Client Error. Access to model JerrryNie/ConceptCLIP is restricted and you are not in the "
                        "authorized list.")
    assert "accept the terms" in str(hub.load_error(forbidden, ref))
    offline = str(hub.load_error(OSError("We couldn't connect to 'https://huggingface.co'"), ref))
    assert DEFAULT_MODEL in offline and "local Hugging Face cache" in offline
    other = str(hub.load_error(RuntimeError("boom\nsecond line"), ref))
    assert other.startswith(f"cannot load model {DEFAULT_MODEL!r}") and "boom" in other and "\n" not in other


def test_token_never_reaches_logs_or_provenance(conceptclip_replica_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    seen: dict[str, object] = {}
    import transformers

    real = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    with caplog.at_level(logging.DEBUG):
        b = load_conceptclip(str(conceptclip_replica_dir), device="cpu", trust_remote_code=True)
        text = json.dumps(b.provenance())
        b.encode_texts(["a cell"])
    out, err = capfd.readouterr()
    assert seen["token"] == FAKE_TOKEN and seen["trust_remote_code"] is True  # handed to the loader ...
    for where in (text, out, err, caplog.text, repr(vars(b))):
        assert FAKE_TOKEN not in where  # ... and nowhere else


def test_meta_device_failure_is_retried_once(conceptclip_replica_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    real = transformers.AutoModel.from_pretrained
    calls: list[dict] = []

    def flaky(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise NotImplementedError("Cannot copy out of meta tensor; no data!")
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", flaky)
    b = load_conceptclip(str(conceptclip_replica_dir), device="cpu", trust_remote_code=True)
    assert len(calls) == 2 and calls[1]["low_cpu_mem_usage"] is False
    assert b.embed_dim == 32


def test_not_a_conceptclip_model_is_refused(hf_clip_dir: Path) -> None:
    with pytest.raises(XaiclipError, match="ConceptCLIP"):
        load_conceptclip(str(hf_clip_dir), device="cpu", trust_remote_code=True)


def test_registry_reaches_the_backend(conceptclip_replica_dir: Path) -> None:
    from xaiclip_cli.models.registry import load_backend

    b = load_backend("conceptclip", model=str(conceptclip_replica_dir), device="cpu", trust_remote_code=True)
    assert isinstance(b, ConceptCLIPBackend) and b.device.type == "cpu"


# --- the real model (GPU + token only) ---------------------------------------------------------------------------
@pytest.mark.real_model
@pytest.mark.skipif(not (torch.cuda.is_available() and os.environ.get("HF_TOKEN")),
                    reason="needs CUDA and HF_TOKEN with access to JerrryNie/ConceptCLIP")
def test_real_conceptclip_contract() -> None:
    """Run with HF_HUB_OFFLINE=0 and HF_HOME pointing at your cache (tests/conftest.py defaults to offline + temp)."""
    try:
        b = load_conceptclip(device="cuda")
    except XaiclipError as exc:
        if "HF_HUB_OFFLINE" in str(exc):
            pytest.skip(str(exc))
        raise
    assert (b.embed_dim, b.token_grid, b.image_size, b.num_prefix_tokens) == (1152, (27, 27), 384, 0)
    assert b.model.text_proj[0].in_features == 768
    assert b.raw_logit_scale == pytest.approx(4.5706, abs=1e-3)
    assert b.raw_logit_bias == pytest.approx(-11.161, abs=1e-3)
    assert b.raw_concept_logit_scale == pytest.approx(4.5115, abs=1e-3)
    assert b.raw_concept_logit_bias == pytest.approx(-11.034, abs=1e-3)
    px = _pixels(b, 2)
    with torch.no_grad():
        g_bf16, tok = b.encode_image(px)
        b.amp_dtype = None
        g_fp32, _ = b.encode_image(px)
    assert tok.shape == (2, 729, 1152)
    assert torch.nn.functional.cosine_similarity(g_bf16, g_fp32).min() >= 0.999
    assert b.provenance()["model_revision"] == DEFAULT_REVISION


# --- remote code only when pinned and trusted ----------------------------------------------------------------------
def _never_loaded(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record from_pretrained calls: a refusal must come before any repository code is fetched or run."""
    import transformers

    calls: list[tuple] = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("from_pretrained reached")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", record)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", record)
    return calls


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(("model", "revision", "trust", "needle"), [
    ("someone/OtherCLIP", None, False, "pass --trust-remote-code"),
    ("someone/OtherCLIP", COMMIT, False, "pass --trust-remote-code"),
    ("someone/OtherCLIP", None, True, "needs --revision <40-hex commit> (got none)"),
    ("someone/OtherCLIP", "main", True, "needs --revision <40-hex commit> (got main)"),
    (DEFAULT_MODEL, "main", False, "pass --trust-remote-code"),
    (DEFAULT_MODEL, "v1.0", True, "(got v1.0)"),
])
def test_unpinned_or_untrusted_remote_code_is_refused(monkeypatch: pytest.MonkeyPatch, model: str,
                                                       revision: str | None, trust: bool, needle: str) -> None:
    calls = _never_loaded(monkeypatch)
    with pytest.raises(UsageError) as err:
        load_conceptclip(model, revision, device="cpu", trust_remote_code=trust)
    assert needle in str(err.value) and "\n" not in str(err.value) and not calls


def test_local_folder_needs_trust(conceptclip_replica_dir: Path) -> None:
    with pytest.raises(UsageError, match=f"--model {conceptclip_replica_dir} runs that repository's own Python code"):
        load_conceptclip(str(conceptclip_replica_dir), device="cpu")


def test_pinned_default_and_trusted_commit_reach_the_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _never_loaded(monkeypatch)
    with pytest.raises(XaiclipError, match="from_pretrained reached"):
        load_conceptclip(None, device="cpu")  # the pinned default needs no flag
    assert calls[-1][1]["revision"] == DEFAULT_REVISION and calls[-1][1]["trust_remote_code"] is True
    with pytest.raises(XaiclipError, match="from_pretrained reached"):
        load_conceptclip("someone/OtherCLIP", COMMIT, device="cpu", trust_remote_code=True)
    assert calls[-1][0][0] == "someone/OtherCLIP" and calls[-1][1]["revision"] == COMMIT


def test_cli_refuses_other_remote_code_with_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from xaiclip_cli.cli.main import app

    r = CliRunner().invoke(app, ["store", "text", "--h5", str(tmp_path / "s.h5"), "--backend", "conceptclip",
                                 "--model", "someone/OtherCLIP", "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "--trust-remote-code" in r.stderr and not (tmp_path / "s.h5").exists()
    r = CliRunner().invoke(app, ["cam", "layers", "--backend", "conceptclip", "--model", "someone/OtherCLIP",
                                 "--trust-remote-code", "--device", "cpu"])
    assert r.exit_code == 2 and "needs --revision <40-hex commit>" in r.stderr, r.output
