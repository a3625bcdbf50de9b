from careloop.domain.validators import is_valid_icd10_cm, is_valid_npi


def test_npi_with_correct_luhn_check_digit_is_valid() -> None:
    assert is_valid_npi("1234567893")


def test_npi_with_wrong_check_digit_or_shape_is_invalid() -> None:
    assert not is_valid_npi("1234567890")
    assert not is_valid_npi("123456789")
    assert not is_valid_npi("12345678931")
    assert not is_valid_npi("12345a7893")


def test_icd10_cm_codes_are_checked_for_format() -> None:
    for code in ("E11.9", "M54.50", "S83.511A", "I10", "U07.1", "e11.9"):
        assert is_valid_icd10_cm(code), code
    for code in ("E11.", "11.9", "E1", "E11.12345", "E11-9", ""):
        assert not is_valid_icd10_cm(code), code
