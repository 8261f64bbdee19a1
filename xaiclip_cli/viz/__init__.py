"""Pictures of explanations: colormaps, overlays and CAM figures (matplotlib and PIL only)."""
