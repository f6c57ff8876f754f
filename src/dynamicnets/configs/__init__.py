"""Training configs shipped with the package, usable by name.

```python
from dynamicnets.configs import find_config, list_configs
list_configs()                    # ['cifar10_mobilenetv2_dyconv', 'cifar10_resnet20', ...]
find_config("digits_small_cnn")   # Path of the installed YAML file
find_config("my_run.yaml")        # an existing file is used as it is
```

On the command line: `dynamicnets train --config digits_small_cnn` (a name) or
`dynamicnets train --config path/to/my_run.yaml` (a file).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ConfigError

__all__ = ["find_config", "list_configs"]

_SUFFIXES = (".yaml", ".yml")


def _folder() -> Path:
    return Path(str(resources.files(__name__)))


def list_configs() -> list[str]:
    """Names of the shipped configs, sorted (the YAML file names without `.yaml`)."""
    return sorted(p.stem for p in _folder().iterdir() if p.suffix in _SUFFIXES)


def find_config(name_or_path: str | Path) -> Path:
    """The YAML file a `--config` value stands for.

    An existing file wins; otherwise a bare name (`cifar10_resnet20`, with or without
    `.yaml`) is looked up among the shipped configs.

    Args:
        name_or_path: a path to a YAML file, or the name of a shipped config.

    Returns:
        The path of the file to read.

    Raises:
        ConfigError: neither a file nor a shipped config; the message lists the shipped names.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    text = str(name_or_path)
    stem = text[: -len(path.suffix)] if path.suffix in _SUFFIXES else text
    if "/" not in stem and "\\" not in stem:
        for suffix in _SUFFIXES:
            shipped = _folder() / f"{stem}{suffix}"
            if shipped.is_file():
                return shipped
    raise ConfigError(
        f"{text}: config file not found, and not the name of a shipped config "
        f"(shipped: {', '.join(list_configs())})"
    )
