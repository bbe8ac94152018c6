"""nbflow's settings: one pydantic model, read from ``NBFLOW_*`` environment variables and
overridable in code with :func:`nbflow.configure`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nbflow.exceptions import ConfigurationError

__all__ = ["Settings", "configure", "get_settings", "parse_size"]

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


def parse_size(value: int | str) -> int:
    """Parse a byte count such as ``10737418240``, ``"10GiB"``, ``"500 MB"`` or ``"2g"``."""
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number):]
    if not number or unit not in _UNITS:
        raise ConfigurationError(
            f"cannot read {value!r} as a size; write a number of bytes or e.g. '10GiB', '500MB'"
        )
    return int(float(number) * _UNITS[unit])


def _default_secret_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "nbflow" / "secret.key"


class Settings(BaseModel):
    """Everything configurable about nbflow.

    Each field can be set with an environment variable ``NBFLOW_<FIELD>`` (e.g. ``NBFLOW_HOME``,
    ``NBFLOW_SIZE_LIMIT=5GiB``) or in code with ``nbflow.configure(field=value)``.
    """

    model_config = ConfigDict(validate_assignment=True, validate_default=True, extra="forbid")

    home: Path = Field(default=Path(".nbflow"), description="Directory of the result store and run history.")
    size_limit: int = Field(default=10 * 1024**3, description="Store size limit in bytes; LRU eviction beyond.")
    secret_file: Path = Field(
        default_factory=_default_secret_file,
        description="Per-user secret key authenticating stored payloads (created on first use, mode 0600).",
    )
    strict_buffers: bool = Field(
        default=False,
        description="Also authenticate raw array buffers with a keyed MAC (slower), not only a checksum.",
    )
    display: bool = Field(default=True, description="Show task graphs automatically in notebooks.")

    @field_validator("size_limit", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        size = parse_size(value)
        if size <= 0:
            raise ValueError("size_limit must be positive")
        return size

    @field_validator("home", "secret_file", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Resolved once, when set: a later os.chdir in a notebook must not move the store.
        return value.expanduser().absolute()


_lock = threading.Lock()
_settings: Settings | None = None


def _from_environment() -> Settings:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = os.environ.get(f"NBFLOW_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = raw
    try:
        return Settings(**values)
    except ValidationError as error:
        raise ConfigurationError(f"invalid NBFLOW_* environment variable: {error}") from None


def get_settings() -> Settings:
    """The settings in force (read from the environment on first use)."""
    global _settings
    current = _settings
    if current is None:
        with _lock:
            if _settings is None:
                _settings = _from_environment()
            current = _settings
    return current


def configure(**overrides: Any) -> Settings:
    """Change settings for this process, e.g. ``nbflow.configure(home="/data/cache", size_limit="50GiB")``.

    Unknown names or invalid values raise :class:`~nbflow.exceptions.ConfigurationError`. Returns the new
    settings. Open stores are reopened at their new place on next use.
    """
    global _settings
    unknown = set(overrides) - set(Settings.model_fields)
    if unknown:
        raise ConfigurationError(
            f"unknown setting(s) {sorted(unknown)}; known settings are {sorted(Settings.model_fields)}"
        )
    with _lock:
        base = _settings if _settings is not None else _from_environment()
        try:
            merged = {**base.model_dump(), **overrides}
            _settings = Settings(**merged)
        except ValidationError as error:
            raise ConfigurationError(f"invalid setting: {error}") from None
        new = _settings
    _notify(new)
    return new


_listeners: list[Any] = []


def on_change(callback: Any) -> None:
    """Register ``callback(settings)`` to run after every :func:`configure` or :func:`reset` (which passes
    None: the new settings are read lazily). Used to reopen stores."""
    _listeners.append(callback)


def _notify(settings: Settings | None) -> None:
    for callback in list(_listeners):
        callback(settings)


def reset() -> None:
    """Forget configured values; the next :func:`get_settings` reads the environment again (for tests)."""
    global _settings
    with _lock:
        _settings = None
    _notify(None)
