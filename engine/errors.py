"""The engine's exception tree.

::

    DanmakuError
    ├── ConfigError        bad settings; the CLI prints it and exits 2
    ├── TokenError         a token that is malformed, forged, expired or for another room
    ├── StartupError       a child process or a listener could not be started
    └── (engine.redis.RedisError and its subclasses live with the Redis layer)

Bad client input never raises: the codec turns it into a ``ProtocolError`` value that the gateway
answers with a documented error frame or close code.
"""


class DanmakuError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(DanmakuError):
    pass


class TokenError(DanmakuError):
    pass


class StartupError(DanmakuError):
    pass
