"""Reading the YAML config file: light (no Beam import), shared by the pipeline and the operator commands."""

from __future__ import annotations

from typing import Any

import yaml

from transforms.common import ConfigError


def read_config_file(path: str) -> dict[str, Any]:
    """The config's sections as a dict; a clear ConfigError when the file is missing or not YAML."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError("--config", f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError("<root>", "the config must be a mapping of sections")
    return raw
