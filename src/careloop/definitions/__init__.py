"""Shipped workflow definitions (YAML). Loaded, validated and stored by version."""
