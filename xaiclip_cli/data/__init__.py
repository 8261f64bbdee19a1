"""Data sources (MedMNIST npz, image folders, CSV manifests, synthetic toy cells) and prompt sets.

Modules: ``base`` (DataSource, Sample), ``npz`` (MedMNIST-format reader), ``medmnist`` (metadata, MD5, download),
``toycells`` (synthetic cells with masks), ``folder``, ``csv_manifest``, ``imageio``, ``prompts``, ``refs``
(``open_source("toycells" | "medmnist:<flag>" | "folder:<dir>" | "csv:<file>")``) and ``loader`` (batches).
"""
