"""Settings models: one pydantic-settings model per command group plus the common runtime model."""
