"""ASCOB's REST API, repository of runs, and command line."""

__version__ = "0.1.0"
