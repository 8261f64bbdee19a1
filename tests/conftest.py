"""Test-wide settings: offline hub, headless matplotlib, a private HF cache per session."""

from __future__ import annotations

import os
import tempfile

# Set before any test module imports transformers/huggingface_hub or matplotlib.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Remote code is copied into $HF_HOME/modules: tests never touch the user's cache unless asked to
# (XAICLIP_TEST_USE_HF_CACHE=1, for the real-model tests on a workstation that has the weights).
if os.environ.get("XAICLIP_TEST_USE_HF_CACHE") != "1":
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="xaiclip-hf-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
