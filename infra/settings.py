"""Reading `greenloop.toml` from disk: the one place a config file is opened.

`policy.config` parses text (pure); this module adds the file and the environment. Every package above
`policy` loads configuration through `load_config`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from policy.config import GreenloopConfig, load_config_text
from policy.errors import ConfigError

__all__ = ["CONFIG_ENV", "load_config"]

CONFIG_ENV = "GREENLOOP_CONFIG"


def load_config(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> GreenloopConfig:
    """Load the configuration from `path`, `$GREENLOOP_CONFIG`, or `./greenloop.toml`.

    With no file at the default location, the built-in defaults (no projects) are used.

    Raises:
        ConfigError: the file is unreadable or invalid; the message names the file and the key.
    """
    environ = os.environ if env is None else env
    explicit = path if path is not None else environ.get(CONFIG_ENV)
    file = Path(explicit) if explicit else Path("greenloop.toml")
    if not file.exists():
        if explicit:
            raise ConfigError(f"{file}: configuration file not found")
        return load_config_text("", source=str(file), env=environ)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read configuration: {exc.__class__.__name__}") from None
    return load_config_text(text, source=str(file), env=environ)
