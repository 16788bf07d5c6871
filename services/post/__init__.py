"""
The Post service: posts and authors' timelines.
"""

from __future__ import annotations

from typing import Any

from txplatform.catalogue import ServiceDeclaration, ServiceParts
from txplatform.options import checkNotNegative

from . import api

__all__ = ["declaration"]


def _build(parts: ServiceParts) -> Any:
    from .service import PostService

    return PostService(
        parts.bus,
        parts.database,
        parts.reactor,
        parts.fields,
        cacheSize=parts.options["post-cache-size"],
        postRate=parts.options["post-rate"],
    )


declaration = ServiceDeclaration(
    name=api.SERVICE_NAME,
    serviceId=api.SERVICE_ID,
    service="txplatform_services.post.service:PostService",
    routes="txplatform_services.post.routes:PostRoutes",
    summary="Create, read, list and delete posts.",
    options=[
        [
            "post-cache-size",
            None,
            4096,
            "Post views each replica keeps in memory (0: none).",
            int,
        ],
        [
            "post-rate",
            None,
            0,
            "Posts an author may create per minute, counted in the database across replicas"
            " and gateways (429 with Retry-After beyond), such as 30. Default: 0, no limit.",
            int,
        ],
    ],
    check=lambda options: checkNotNegative(options, "post-cache-size", "post-rate"),
    build=_build,
    events=[api.POST_CREATED, api.POST_DELETED, api.POSTS_PURGED],
)
