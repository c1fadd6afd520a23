"""Distribution's configuration file, read the way Distribution reads it."""

from dockyard.config.load import ConfigError, LoadedConfig, load_config, load_config_apart
from dockyard.config.model import Config, parse_go_duration

__all__ = [
    "Config",
    "ConfigError",
    "LoadedConfig",
    "load_config",
    "load_config_apart",
    "parse_go_duration",
]
