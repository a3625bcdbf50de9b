"""Use cases: one transaction each, every one taking the acting user."""
