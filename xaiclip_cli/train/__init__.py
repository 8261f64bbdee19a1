"""Training: patient-level splits, classifier fitting, per-patient features, fusion (and CLIP training)."""
