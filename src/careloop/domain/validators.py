"""Format checks for healthcare identifiers and codes."""

from __future__ import annotations

import re

_ICD10_CM = re.compile(r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")


def is_valid_npi(npi: str) -> bool:
    """An NPI is 10 digits whose last digit is a Luhn check over the prefix 80840 + first nine.

    The 80840 prefix is the ISO health-industry issuer code the NPI standard prepends.
    """
    if len(npi) != 10 or not npi.isdigit():
        return False
    digits = [int(c) for c in "80840" + npi]
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def is_valid_icd10_cm(code: str) -> bool:
    """ICD-10-CM format: letter, digit, digit or letter, then an optional dot and 1-4 chars.

    This checks the shape of a code, not its presence in the current code set.
    """
    return bool(_ICD10_CM.match(code.upper()))
