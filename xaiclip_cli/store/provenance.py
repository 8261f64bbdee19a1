"""What identifies a store's contents: model id/revision, processor, dtypes, sizes → root attrs and fingerprints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xaiclip_cli.store import layout as L
from xaiclip_cli.versions import lib_versions


def xaiclip_version() -> str:
    """The running xaiclip version."""
    from xaiclip_cli import __version__

    return str(__version__)


def _first(d: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if d.get(k) not in (None, ""):
            return d[k]
    return default


@dataclass
class StoreIdentity:
    """Model facts + storage choices of a store; ``fingerprint`` decides whether rows may be appended."""

    model_id: str
    model_revision: str
    processor_config: dict[str, Any]
    model_input_size: int
    embed_dim: int
    compute_dtype: str = "float32"
    cls_dtype: str = "float32"
    has_tokens: bool = True
    n_tokens: int = -1
    scalars: dict[str, float | None] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def token_dtype(self) -> str:
        """dtype of image_token_features ("none" without tokens)."""
        return str(L.TOKEN_DTYPE) if self.has_tokens else "none"

    def model_fingerprint(self) -> str:
        """SHA-256 of the model part only (what text groups depend on)."""
        return L.fingerprint_of({
            "schema": L.SCHEMA_VERSION, "model_id": self.model_id, "model_revision": self.model_revision,
            "processor_config": self.processor_config, "model_input_size": self.model_input_size,
            "compute_dtype": self.compute_dtype,
        })

    def fingerprint(self) -> str:
        """SHA-256 of canonical JSON: model id+revision, dtypes, input size, processor config, has_tokens, schema."""
        return L.fingerprint_of({
            "schema": L.SCHEMA_VERSION, "model_id": self.model_id, "model_revision": self.model_revision,
            "processor_config": self.processor_config, "model_input_size": self.model_input_size,
            "compute_dtype": self.compute_dtype, "cls_dtype": self.cls_dtype, "token_dtype": self.token_dtype,
            "has_tokens": self.has_tokens,
        })

    def model_attrs(self) -> dict[str, Any]:
        """Root attrs that depend on the model only (written by either stage)."""
        nan = float("nan")
        s = self.scalars
        attrs: dict[str, Any] = {
            L.SCHEMA_ATTR: L.SCHEMA_VERSION,
            "version": L.SEED_VERSION,
            "xaiclip_version": xaiclip_version(),
            "model_id": self.model_id,
            "model_revision": self.model_revision,
            "lib_versions": L.json_attr(lib_versions()),
            "model_input_size": int(self.model_input_size),
            "compute_dtype": self.compute_dtype,
            "D": int(self.embed_dim),
            "model_fingerprint": self.model_fingerprint(),
        }
        for name in L.SCALAR_ATTRS + L.EXP_SCALAR_ATTRS:
            v = s.get(name)
            attrs[name] = nan if v is None else float(v)
        return attrs

    def image_attrs(self) -> dict[str, Any]:
        """Root attrs the image stage adds: dtypes, token facts, the full fingerprint."""
        return {
            **self.model_attrs(),
            "T_img": int(self.n_tokens if self.has_tokens else -1),
            "cls_dtype": self.cls_dtype,
            "token_dtype": self.token_dtype,
            "cls_normalized": True,
            "tokens_projected": bool(self.has_tokens),
            "tokens_normalized": False,
            "has_tokens": bool(self.has_tokens),
            "fingerprint": self.fingerprint(),
        }


def identity_from_backend(backend: Any, *, cls_dtype: str = "float32", has_tokens: bool = True,
                          n_tokens: int = -1) -> StoreIdentity:
    """Collect a backend's provenance into a StoreIdentity (tolerant of missing provenance keys)."""
    prov = dict(backend.provenance() or {})
    processor = _first(prov, "processor_config", "preprocess", "processor", default={})
    if not isinstance(processor, dict):
        processor = {"value": str(processor)}
    dtype = str(getattr(backend, "dtype", "float32")).replace("torch.", "")
    return StoreIdentity(
        model_id=str(_first(prov, "model_id", "model", "name", default=getattr(backend, "name", "backend"))),
        model_revision=str(_first(prov, "model_revision", "revision", "commit", "content_hash", default="")),
        processor_config=processor,
        model_input_size=int(getattr(backend, "image_size", 0) or 0),
        embed_dim=int(backend.embed_dim),
        compute_dtype=dtype,
        cls_dtype=cls_dtype,
        has_tokens=has_tokens,
        n_tokens=n_tokens,
        scalars=dict(backend.scalars()),
        provenance=prov,
    )


def intensity_provenance(source: Any) -> dict[str, Any] | None:
    """How the source's image files became uint8 (``--intensity``): the request, and the mapping applied to the
    first image (kind, parameters, source dtype, stored min/max); None for sources that hold uint8 arrays."""
    info = source.info()
    extra = info.extra if isinstance(info.extra, dict) else {}
    if "intensity" not in extra:
        return None
    record: dict[str, Any] = {"requested": extra["intensity"], "rule": "data.formats (auto: 8-bit files unchanged, "
                              "deeper files per-image min-max, DICOM its own VOI window)"}
    sizes = source.split_sizes()
    first = next((s for s in sizes if sizes[s]), None)
    if first is not None:
        sample = source.get(first, 0)
        if sample.intensity is not None:
            record["first_image"] = {"path": sample.path, **sample.intensity}
    return record
