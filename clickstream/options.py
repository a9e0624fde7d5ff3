"""Flags that map onto ``Settings`` fields, shared by every command module (a flag wins over the environment)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from runtime.settings import Settings, env_var_name, load_settings

_F = TypeVar("_F", bound=Callable[..., Any])


def setting_option(field: str, *flags: str, **kwargs: Any) -> Callable[[_F], _F]:
    """A flag that overrides one Settings field; its help names the environment variable behind it."""
    info = Settings.model_fields[field]
    default = info.default if info.default_factory is None else "per host"
    text = f"{info.description} [env: {env_var_name(field)}; default: {default}]"
    return click.option(*flags, field, default=None, help=text, show_default=False, **kwargs)


def build_settings(**overrides: Any) -> Settings:
    """The settings of this run: environment, then the command's flags (ConfigError becomes exit 2)."""
    return load_settings(**overrides)
