"""Adapters: the database, definition files, conditions and outbound clients."""
