"""
The Klein web gateway: the platform's only entry point for clients.
"""

from .app import Gateway, Principal
from .site import GatewaySite

__all__ = ["Gateway", "GatewaySite", "Principal"]
