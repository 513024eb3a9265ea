import pytest

from daemon.core.units import parse_duration, parse_rate


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2), ("5m", 300), ("6h", 21600), ("1.5s", 1.5), ("1d", 86400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5", 5, "5 sec", "-1s", "", "s"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration|unit"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "per_second"), [("5/s", 5), ("600/m", 10), ("3600/h", 1)])
def test_rates(text: str, per_second: float) -> None:
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("text", ["5", "0/s", "5/x", 5])
def test_bad_rates(text: object) -> None:
    with pytest.raises(ValueError, match="rate|zero"):
        parse_rate(text)


def test_only_ascii_digits_make_a_duration_or_a_rate() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("4\u0663s")  # ARABIC-INDIC DIGIT THREE: float() would take it
    with pytest.raises(ValueError, match="not a rate"):
        parse_rate("5\u0968/s")
