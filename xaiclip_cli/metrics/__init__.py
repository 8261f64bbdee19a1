"""Evaluation metrics of explanations and of feature libraries (metrics.md): pure functions, no CLI imports."""
