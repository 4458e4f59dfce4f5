"""Exception classes of hexsweep: user errors get one clear line, never a traceback wall."""


class HexsweepError(Exception):
    """Base class of every error hexsweep raises on purpose."""


class ConfigError(HexsweepError):
    """A config value is invalid; the message names the key, the value and what is allowed."""


class IllegalMoveError(HexsweepError):
    """A move is not legal in the current position."""


class DataError(HexsweepError):
    """A dataset folder is missing, corrupt, or does not match the config."""
