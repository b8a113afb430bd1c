"""The one Settings object, built at the entry point from YAML and the environment."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
