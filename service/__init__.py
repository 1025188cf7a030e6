"""edxlive.service: the daemon side. Kept import-light: nothing heavy is imported here."""

__version__ = "0.1.0"
