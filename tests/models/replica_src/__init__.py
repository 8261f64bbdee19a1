"""Templates of the ConceptCLIP replica's remote code (copied into the replica directory by save_pretrained)."""
