"""
The Klein web gateway: the platform's only entry point for clients.  It
serves the HTTP operations the installed services declare
(L{txplatform.routes}), and the web client at C{/} (L{webclient}).
"""

from .app import Gateway, RouteConflict
from .site import GatewaySite

__all__ = ["Gateway", "GatewaySite", "RouteConflict"]
