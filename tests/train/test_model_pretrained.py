"""The pretrained policy offline: auto falls back at once (cache only), true fails with one clear line."""

from __future__ import annotations

import pytest

from xaiclip_cli.errors import XaiclipError
from xaiclip_cli.train import model as M


def test_auto_offline_uses_the_cache_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert not M._weights_cached("test_resnet")
    warnings: list[str] = []
    net, loaded = M.build_model("test_resnet", 3, 1, 32, pretrained="auto", warn=warnings.append)
    assert loaded is False and net.num_classes == 3
    assert warnings and "not cached" in warnings[0]  # the cache-only path, not the hub client's retries


def test_true_offline_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(XaiclipError) as e:
        M.build_model("test_resnet", 3, 1, 32, pretrained="true")
    assert "--pretrained-path" in str(e.value) and "\n" not in str(e.value)


def test_no_pretrained_config_is_not_cached() -> None:
    assert M._weights_cached("no_such_model_xyz") is False
