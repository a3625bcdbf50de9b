"""RFC 6238 time-based one-time passwords (pyotp): 6 digits, 30-second steps, SHA-1,
which is what every authenticator app understands."""

from __future__ import annotations

import hmac
from datetime import datetime

import pyotp

_STEP_SECONDS = 30


class PyotpCodes:
    def __init__(self, issuer: str = "careloop") -> None:
        self._issuer = issuer

    def new_secret(self) -> str:
        return pyotp.random_base32()  # 160 bits, the RFC 4226 recommendation

    def provisioning_uri(self, secret: str, username: str) -> str:
        return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=self._issuer)

    def matching_step(self, secret: str, code: str, at: datetime) -> int | None:
        """The step the code belongs to, accepting one step either side of ``at`` for
        clock drift between the phone and the server."""
        code = code.strip().replace(" ", "")
        if len(code) != 6 or not code.isdigit():
            return None
        totp = pyotp.TOTP(secret)
        step = int(at.timestamp()) // _STEP_SECONDS
        for candidate in (step - 1, step, step + 1):
            if hmac.compare_digest(totp.generate_otp(candidate), code):
                return candidate
        return None
