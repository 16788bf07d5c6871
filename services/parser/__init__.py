"""
The Parser service: decodes and checks request bodies for the gateway, so
parsing large bodies scales apart from the gateway's event loop.
"""

from txplatform.catalogue import ServiceDeclaration

from . import api

__all__ = ["declaration"]

declaration = ServiceDeclaration(
    name=api.SERVICE_NAME,
    serviceId=api.SERVICE_ID,
    service="txplatform_services.parser.service:ParserService",
    summary="Decodes and checks request bodies for gateways (a pool of replicas).",
)
