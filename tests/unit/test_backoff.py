"""The one backoff rule every retry in the project uses."""
from services.common.backoff import backoff_seconds


def test_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff_seconds(n, base=0.2, cap=5.0, jitter=0.5) for n in (1, 2, 3, 5, 6, 9)] == [0.2, 0.4, 0.8, 3.2, 5.0, 5.0]


def test_jitter_spreads_half_either_way_even_at_the_cap() -> None:
    assert backoff_seconds(1, base=1.0, cap=8.0, jitter=0.0) == 0.5
    assert backoff_seconds(40, base=1.0, cap=8.0, jitter=0.0) == 4.0
    assert backoff_seconds(40, base=1.0, cap=8.0, jitter=0.999) < 12.0


def test_any_attempt_number_gives_a_finite_wait() -> None:
    for attempt in (0, 1023, 1024, 1025, 10**6, 10**18):
        assert 0 < backoff_seconds(attempt, base=0.2, cap=5.0, jitter=0.5) <= 5.0
