"""Data sources (MedMNIST npz, image folders, CSV manifests, synthetic toy cells) and prompt sets."""
