"""insplad: dataset tools, methods and leaderboard for anomaly detection in industrial inspection in the wild."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("insplad")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0"
