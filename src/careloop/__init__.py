"""careloop: the governed workflow layer for healthcare referral coordination."""

__version__ = "0.1.0"
