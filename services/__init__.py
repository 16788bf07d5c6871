"""
The platform's services.  Each package has an C{api} module (its identifier,
messages and events: all a caller needs) and its implementation beside it.
"""

from txplatform.serviceid import ServiceId, ServiceRegistry

__all__ = ["GATEWAY_ID", "platformRegistry"]

#: The gateway calls services but serves none; it still has an identity.
GATEWAY_ID = ServiceId.fromHex("010100")


def platformRegistry() -> ServiceRegistry:
    """
    The names and identifiers of the platform's own services.
    """
    from .account import api as account
    from .notify import api as notify
    from .parser import api as parser
    from .post import api as post

    return ServiceRegistry(
        [
            (account.SERVICE_NAME, account.SERVICE_ID),
            (post.SERVICE_NAME, post.SERVICE_ID),
            (notify.SERVICE_NAME, notify.SERVICE_ID),
            (parser.SERVICE_NAME, parser.SERVICE_ID),
            ("gateway", GATEWAY_ID),
        ]
    )
