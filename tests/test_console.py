"""The CLI's voice: progress of long reads (a bar on a terminal, a log line elsewhere)."""

from __future__ import annotations

import logging

import click
import pytest

from clickstream.console import last_progress_line, progress_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_long_work_logs_how_far_it_got_and_short_work_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    with (
        caplog.at_level(logging.INFO, logger="clickstream"),
        progress_of("reading commit records", "commit", bar=False, log_seconds=30, clock=clock) as report,
    ):
        for done in range(1, 101):
            clock.now += 1.0  # 100 s of work, one record a second
            report(done, 100)
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [f"reading commit records: {done} of 100 commits" for done in (30, 60, 90)]
    caplog.clear()
    with (
        caplog.at_level(logging.INFO, logger="clickstream"),
        progress_of("reading commit records", "commit", bar=False, clock=FakeClock()) as report,
    ):
        report(5, 5)
    assert not caplog.records


def test_a_commands_phases_share_one_timer_so_a_long_command_is_never_silent_for_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """replay and `summary --download` run phases of 25 s each (listing, reading records, reading files): each with
    its own 30 s timer, the command said nothing for minutes."""
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="clickstream"), click.Context(click.Command("summary")):
        for phase in ("listing events/", "reading commit records", "reading customer_aggregates"):
            with progress_of(phase, "file", bar=False, log_seconds=30, clock=clock) as report:
                for done in range(1, 26):
                    clock.now += 1.0
                    report(done, 25)
        assert last_progress_line(clock).at == 60.0, "the one the phases moved on"
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["reading commit records: 5 of 25 files", "reading customer_aggregates: 10 of 25 files"]
    caplog.clear()
    with (
        caplog.at_level(logging.INFO, logger="clickstream"),
        click.Context(click.Command("summary")),
        progress_of("listing events/", "file", bar=False, log_seconds=30, clock=clock) as report,
    ):
        clock.now += 29.0
        report(1, 1)
    assert not caplog.records, "another command run starts its own timer"


def test_on_a_terminal_it_is_a_bar_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_of("reading commit records", "commit", bar=True) as report:
        for done in range(1, 4):
            report(done, 3)
    bar = capsys.readouterr().err
    assert "reading commit records" in bar and "/3 [" in bar, bar
    assert "\n" not in bar, "once done, the bar leaves no line behind"


def test_a_bar_whose_total_grows_shows_the_new_total(capsys: pytest.CaptureFixture[str]) -> None:
    """A listing passing the files it expected drew 2000/1000: the bar kept its first total."""
    with progress_of("listing events/", "file", bar=True) as report:
        report(1_000, 1_000)
        report(2_000, 2_000)
    bar = capsys.readouterr().err
    assert "/2000 [" in bar and "2000/1000" not in bar, bar


@pytest.mark.parametrize(
    ("count", "expected"), [(0, "0 files"), (1, "1 file"), (2, "2 files"), (1_500, "1,500 files")]
)
def test_a_count_takes_its_nouns_form(count: int, expected: str) -> None:
    """Lines said "1 Parquet parts", "(1 files, ...)", "1 shards held", "in 1 requests"."""
    from runtime.logs import count_of

    assert count_of(count, "file") == expected
    assert count_of(count, "entry", "entries").endswith("entry" if count == 1 else "entries")


@pytest.mark.parametrize(("count", "verb"), [(0, "are"), (1, "is"), (2, "are")])
def test_a_verb_agrees_with_its_count(count: int, verb: str) -> None:
    from runtime.logs import verb_for

    assert verb_for(count) == verb
    assert verb_for(count, "was", "were") == ("was" if count == 1 else "were")
