# -*- test-case-name: tests.crypto.test_codecs -*-
"""
A process's keys: a keyring read from its key source, kept up to date, and
the codecs that encrypt with it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from ..interfaces import IPayloadCodec
from .codecs import SealedFieldCodec, SealedPayloadCodec
from .keyfile import KeyringService, keyringFromSource
from .sealing import Sealer

__all__ = ["Keys", "loadKeys"]

#: At most one forced reload of the key file this often (seconds): data
#: under an unknown version may be an attacker's, arriving in bulk.
RELOAD_AT_MOST_EVERY = 1.0


class Keys:
    """
    One keyring in use: at rest for a service, or for the bus.

    @ivar service: Reads the key file again when it changes; a child of the
        process's services.
    """

    def __init__(self, source: str, clock: IReactorTime, name: str, interval: float = 10.0):
        self.clock = clock
        self.keyring = keyringFromSource(source, clock, name)
        self.sealer = Sealer(self.keyring)
        self.service = KeyringService(
            source, self.keyring, clock, interval, onChange=self.sealer.clearCache
        )
        self._lastForced = float("-inf")

    def reload(self) -> bool:
        """
        Read the key file again now (data under a version we do not know
        has arrived): whether new keys were taken.
        """
        now = self.clock.seconds()
        if now - self._lastForced < RELOAD_AT_MOST_EVERY:
            return False
        self._lastForced = now
        return self.service.check(force=True)

    def fieldCodec(self) -> SealedFieldCodec:
        return SealedFieldCodec(self.sealer, self.reload)

    def payloadCodec(self, inner: IPayloadCodec | None = None) -> SealedPayloadCodec:
        return SealedPayloadCodec(self.sealer, inner, self.reload)


def loadKeys(source: str, clock: Any, name: str, interval: float = 10.0) -> Keys:
    """
    @raise txplatform.crypto.keyfile.KeyFileError: The key source cannot be
        used; the message says why.
    """
    return Keys(source, clock, name, interval)
