"""
Likes: like and unlike posts, list who liked one; the post's author is
notified.  A txplatform service in a package of its own.
"""

from txplatform.catalogue import ServiceDeclaration

from .api import POST_LIKED, SERVICE_ID

declaration = ServiceDeclaration(
    name="likes",
    serviceId=SERVICE_ID,
    service="likes.service:LikesService",
    routes="likes.routes:LikeRoutes",
    summary="Likes on posts.",
    events=[POST_LIKED],
)
