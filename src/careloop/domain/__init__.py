"""Pure domain model: imports only the standard library and itself."""
