"""CLIP backends behind one protocol (see base.ClipBackend) and a registry by name."""
