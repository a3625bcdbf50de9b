"""The REST API: authenticate, parse, call one use case, translate errors."""
