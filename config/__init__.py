"""Default configuration shipped with TAZCOM (``default.toml``)."""
