from gptlab.units import format_si


def test_format_si_spans_test_models_to_large_ones() -> None:
    assert format_si(737_280, "FLOP") == "737.280 KFLOP"
    assert format_si(854_655_000, "FLOP") == "854.655 MFLOP"
    assert format_si(1.2e12, "B") == "1.200 TB"
    assert format_si(999, "B") == "999 B" and format_si(12) == "12"
    assert format_si(-2e9, "B") == "-2.000 GB" and format_si(-12) == "-12"  # a negative change scales alike
