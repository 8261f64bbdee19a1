"""Test-wide settings: offline hub, headless matplotlib, a private HF cache per session."""

from __future__ import annotations

import os
import tempfile

# Set before any test module imports transformers/huggingface_hub or matplotlib.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="xaiclip-hf-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
