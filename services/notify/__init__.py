"""
The Notify service: notifications about mentions and followed authors.
"""

from txplatform.catalogue import ServiceDeclaration

from . import api

__all__ = ["declaration"]

declaration = ServiceDeclaration(
    name=api.SERVICE_NAME,
    serviceId=api.SERVICE_ID,
    service="txplatform_services.notify.service:NotifyService",
    routes="txplatform_services.notify.routes:NotifyRoutes",
    summary="Notifications for mentions and followed authors.",
    events=[api.NOTIFICATION_CREATED],
)
