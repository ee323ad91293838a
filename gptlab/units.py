"""Numbers as people read them in logs and tables."""

from __future__ import annotations


def format_si(x: float, unit: str = "") -> str:
    """``737.280 K`` + unit: FLOP counts and bytes from a test model's thousands to a 70B model's trillions."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3f} {prefix}{unit}"
    return f"{x:.0f} {unit}".rstrip()
