"""Flags that map onto ``Settings`` fields, shared by every command module (a flag wins over the environment)."""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import click
from click.core import ParameterSource

from clickstream.errors import FrontDoorError
from runtime.exit_codes import USAGE
from runtime.settings import URL, ConfigError, Settings, env_var_name, load_settings, with_overrides

_F = TypeVar("_F", bound=Callable[..., Any])

#: The forms a time flag takes: a day, or a day, 'T' (or a space) and a time (hours, then minutes, seconds and a
#: fraction, each optional), with an optional 'Z' or offset. Python's fromisoformat alone takes any character
#: between the day and the time, so "2026-03-01+02:00" would be 02:00 on that day.
_ISO_TIME: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}(?::\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?(?:Z|[+-]\d{2}:\d{2})?)?"
)


#: The years a time flag may name: event times, ranges and observation ends of this data (0001-01-01T00+01:00 and
#: 9999-12-31 overflowed Python's dates in UTC conversions and horizons: 'unexpected OverflowError').
FLAG_YEARS: Final = range(1970, 2200)
#: The most customers a --top lists: beyond a reader's use, and within the INT64 its query takes (a larger number
#: printed half a summary, then failed).
TOP_MAX: Final = 100_000


def top_option(default: int, verb: str) -> Callable[[_F], _F]:
    """``--top N``: how many customers a reader lists, from 1 to ``TOP_MAX``."""
    return click.option(
        "--top",
        default=default,
        show_default=True,
        type=click.IntRange(1, TOP_MAX),
        help=f"Top customers to {verb} (at most {TOP_MAX:,}).",
    )


def top_heading(shown: int, asked: int) -> str:
    """The heading of a ``--top`` list: "Top 20 customers", or "All 233 customers" where fewer than asked exist
    (``--top 100000`` headed 233 rows "Top 100000")."""
    return f"All {shown:,} customers" if shown < asked else f"Top {shown:,} customers"


def outside_flag_years(text: str) -> str | None:
    """Why a day or time whose first four characters are its year is refused, or None within ``FLAG_YEARS``."""
    if int(text[:4]) not in FLAG_YEARS:
        return f"{text!r} is outside the years {FLAG_YEARS.start}-{FLAG_YEARS.stop - 1}"
    return None


def parse_flag_time(text: str) -> date | datetime:
    """A day (``date``) or a time (``datetime``, UTC where it names no offset) in one of the ``_ISO_TIME`` forms,
    within ``FLAG_YEARS``; raises ValueError for anything else, e.g. a day with an offset and no time."""
    if not _ISO_TIME.fullmatch(text):
        raise ValueError(f"{text!r} is not a day or a time in the documented forms")
    if refusal := outside_flag_years(text):
        raise ValueError(refusal)
    offset = re.search(r"[+-](\d{2}):(\d{2})$", text) if len(text) > len("YYYY-MM-DD") else None
    if offset and (int(offset.group(1)) > 23 or int(offset.group(2)) > 59):
        raise ValueError(f"{text!r} has an offset outside -23:59 to +23:59")
    if len(text) == len("YYYY-MM-DD"):
        return date.fromisoformat(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class FiniteFloatRange(click.FloatRange):
    """A float flag within bounds that refuses nan and inf (click's FloatRange lets nan through every bound)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        converted = super().convert(value, param, ctx)
        if not math.isfinite(converted):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return converted


#: A field's unit, from the end of its name: shown as the flag's metavar (e.g. ``--stuck-after SECONDS``).
_UNITS: Final = {"_seconds": "SECONDS", "_millis": "MILLISECONDS", "_bytes": "BYTES"}


def setting_option(field: str, *flags: str, purpose: str | None = None, **kwargs: Any) -> Callable[[_F], _F]:
    """A flag that overrides one Settings field; its help names the environment variable behind it, and its
    metavar the unit where the field's name has one. ``purpose``: what this command uses the setting for, where
    that differs from the field's own description."""
    info = Settings.model_fields[field]
    default = info.default if info.default_factory is None else "per host"
    text = f"{purpose or info.description} [env: {env_var_name(field)}; default: {default}{_bounds(info.metadata)}]"
    unit = next((unit for suffix, unit in _UNITS.items() if field.endswith(suffix)), None)
    if unit is not None:
        kwargs.setdefault("metavar", unit)
    return click.option(*flags, field, default=None, help=text, show_default=False, **kwargs)


def _bounds(metadata: list[Any]) -> str:
    """The field's numeric bounds (pydantic's ge/gt/le/lt), as help text."""
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    bounds = [
        f"{words[name]} {getattr(item, name)}" for item in metadata for name in words if hasattr(item, name)
    ]
    return f"; {', '.join(bounds)}" if bounds else ""


def progress_option(func: _F) -> _F:
    """``--progress/--no-progress``: a progress bar on stderr, by default only when stderr is a terminal."""
    return _progress_flag(expose_value=True)(func)


def command_progress_option(func: _F) -> _F:
    """``--progress/--no-progress`` for a command whose long work lies deep in helpers: not passed to the command,
    but read by every ``show_progress(None)`` while it runs."""
    return _progress_flag(expose_value=False)(func)


def _progress_flag(*, expose_value: bool) -> Callable[[_F], _F]:
    return click.option(
        "--progress/--no-progress",
        default=None,
        expose_value=expose_value,
        callback=_remember_progress,
        help="Show a progress bar on stderr [default: on a terminal only]; without one, long work logs a progress "
        "line every 30 s.",
    )


_PROGRESS_KEY = "clickstream.progress"


def _remember_progress(context: click.Context, _param: click.Parameter, value: bool | None) -> bool | None:
    if value is not None:
        context.find_root().meta[_PROGRESS_KEY] = value
    return value


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a bar: as asked, else as the running command's ``--progress/--no-progress`` asked, else on
    a terminal only."""
    if progress is None:
        context = click.get_current_context(silent=True)
        progress = context.find_root().meta.get(_PROGRESS_KEY) if context is not None else None
    return sys.stderr.isatty() if progress is None else bool(progress)


def build_settings(**overrides: Any) -> Settings:
    """The settings of this run: environment, then the command's flags (ConfigError becomes exit 2). A problem with
    a value given as a flag names the flag, one from the environment its variable."""
    try:
        return load_settings(**overrides)
    except ConfigError as error:
        raise ConfigError(_named_by_flags(str(error), overrides)) from None


def build_on(base: Settings, **overrides: Any) -> Settings:
    """``base`` (e.g. a worker's own settings) with the command's flags on top, checked as a whole; a problem
    names the flags as ``build_settings`` does."""
    try:
        return with_overrides(base, **overrides)
    except ConfigError as error:
        raise ConfigError(_named_by_flags(str(error), overrides)) from None


def _named_by_flags(message: str, overrides: dict[str, Any]) -> str:
    context = click.get_current_context(silent=True)
    if context is None:
        return message
    for param in context.command.params:
        name = param.name
        if (
            name in Settings.model_fields
            and overrides.get(name) is not None
            and context.get_parameter_source(name) == ParameterSource.COMMANDLINE
        ):
            message = message.replace(env_var_name(name), max(param.opts, key=len))
    return message


class LocalPath(click.Path):
    """``click.Path`` that refuses a URL (``s3://bucket/key`` would be written to a local folder named ``s3:``) and
    an empty path (``Path("")`` is the current folder: ``--state-dir "$STATE_DIR"`` with the variable unset would
    run a worker there, as ``CLICKSTREAM_STATE_DIR=`` is refused)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail(
                "is empty: give a path (the current folder is '.'; an unset variable in a template gives '')",
                param,
                ctx,
            )
        if isinstance(value, str) and URL.match(value):
            self.fail(
                f"{value!r} is a URL: this takes a local path (copy what is written there with `aws s3 cp`, or "
                "run the command where the file is wanted)",
                param,
                ctx,
            )
        if isinstance(value, str) and not self.dir_okay and os.path.basename(value) in ("", ".", ".."):
            # a path would drop the slash: `generate -o out/` (or `out/.`) wrote a file named "out"
            self.fail(f"{value!r} names a folder: give a file's name", param, ctx)
        return super().convert(value, param, ctx)


def writable_folder(flag: str, folder: Path) -> Path:
    """``folder`` created if need be and proven writable, before any work: a bad output path is a usage error
    (exit 2) named by its flag, not a failure at the end of a long run."""
    problem = _folder_problem(folder)
    if problem:
        raise FrontDoorError(f"{flag} {folder}: {problem}", USAGE)
    return folder


def writable_file(flag: str, path: Path) -> Path:
    """An output file whose folder is (made and) writable, as ``writable_folder`` checks it."""
    # `generate -o -` writes to stdout; a command that cannot would write a file named "-"
    if str(path) == "-":
        raise FrontDoorError(
            f"{flag} -: this command writes a file, not to stdout: give the file's name", USAGE
        )
    if path.is_dir():
        raise FrontDoorError(f"{flag} {path}: is a folder, not a file", USAGE)
    folder = path.parent
    problem = _folder_problem(folder)
    if problem:
        raise FrontDoorError(f"{flag} {path}: its folder {folder} {problem}", USAGE)
    return path


def _folder_problem(folder: Path) -> str | None:
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"cannot be written ({error.strerror or error})"
    return None
