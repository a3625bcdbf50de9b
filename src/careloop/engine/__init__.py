"""The automation runtime: the outbox relay and, later, rules and timers."""
