"""Format checks for healthcare identifiers and codes."""

from __future__ import annotations

import re

_ICD10_CM = re.compile(r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")


def npi_check_digit(first_nine: str) -> int:
    """The Luhn check digit over the prefix 80840 + the NPI's first nine digits.

    The 80840 prefix is the ISO health-industry issuer code the NPI standard prepends.
    """
    total = 0
    # Doubling starts at the rightmost payload digit, as the check digit is appended.
    for index, digit in enumerate(int(c) for c in reversed("80840" + first_nine)):
        if index % 2 == 0:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return (10 - total % 10) % 10


def is_valid_npi(npi: str) -> bool:
    """An NPI is 10 digits whose last digit is the Luhn check digit of the first nine."""
    if len(npi) != 10 or not npi.isdigit():
        return False
    return npi_check_digit(npi[:9]) == int(npi[9])


def is_valid_icd10_cm(code: str) -> bool:
    """ICD-10-CM format: letter, digit, digit or letter, then an optional dot and 1-4 chars.

    This checks the shape of a code, not its presence in the current code set.
    """
    return bool(_ICD10_CM.match(code.upper()))
