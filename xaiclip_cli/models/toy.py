"""The ``toy`` backend: small CLIPs shipped in the package (trained on toy cells), loaded as checkpoint exports.

``toy-vit`` imitates ConceptCLIP's shape (timm ViT, no class token, MAP attention-pool head, patch tokens through
``image_proj``, BERT text tower with [CLS] pooling through ``text_proj``); ``toy-cnn`` is a small ResNet tower
(``layer4`` feature map as tokens). Both are reproduced by ``xaiclip train clip --config configs/<name>.yaml``.
"""

from __future__ import annotations

from typing import Any

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.models.checkpoint import SPEC_FILE, CheckpointBackend, load_export
from xaiclip_cli.resources import resource_dir

TOY_MODELS = ("toy-vit", "toy-cnn")
DEFAULT_TOY = "toy-vit"


def toy_dir(name: str) -> Any:
    """Folder of a shipped toy model (``xaiclip_cli/resources/toy/<name>``)."""
    return resource_dir("toy", name)


def load_toy(model: str | None = None, revision: str | None = None, device: str = "auto",
             **kwargs: Any) -> CheckpointBackend:
    """Registry entry: ``load_backend("toy", model="toy-vit"|"toy-cnn")`` (default toy-vit), offline, any device."""
    name = model or DEFAULT_TOY
    if name not in TOY_MODELS:
        raise UsageError(f"unknown toy model {name!r} (choose from {', '.join(TOY_MODELS)})")
    if revision:
        raise UsageError("--revision does not apply to the toy backend (its models ship with xaiclip)")
    d = toy_dir(name)
    if not (d / SPEC_FILE).is_file():
        raise XaiclipError(f"toy model {name} is missing from {d}; reinstall xaiclip or run "
                           f"'xaiclip train clip --config configs/{name}.yaml --export-to {d}'")
    backend = load_export(d, device=device, name=name, amp=kwargs.get("amp"))
    backend.kind = "toy"
    return backend
