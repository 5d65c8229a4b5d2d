"""Admin routes, behind an admin key (TINYGPT_ADMIN_KEYS)."""

from __future__ import annotations

import logging

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_200_OK

from service.controllers import error_responses
from service.registry import ModelRegistry
from service.schemas import RefusedCheckpoint, ReloadResponse
from service.security import admin_guard

log = logging.getLogger(__name__)


class AdminController(Controller):
    path = "/admin"
    tags = ["admin"]
    guards = [admin_guard]

    @post(
        "/reload",
        operation_id="reload",
        status_code=HTTP_200_OK,
        responses=error_responses(401, 403),
    )
    async def reload(self, registry: NamedDependency[ModelRegistry]) -> ReloadResponse:
        """Load every checkpoint folder anew and swap in those that verify, without dropping
        requests in flight; a checkpoint that fails verification is refused (named, with its
        reason) and its old version keeps serving. Needs `Authorization: Bearer <admin key>`."""
        scan = await registry.reload()
        refused = [RefusedCheckpoint(model, reason) for model, reason in scan.refused.items()]
        log.info(
            "reload: reloaded %s, refused %s, unchanged %s",
            sorted(scan.fresh),
            [r.model for r in refused],
            scan.unchanged,
        )
        return ReloadResponse(
            reloaded=sorted(scan.fresh),
            refused=refused,
            unchanged=sorted(scan.unchanged),
            models=registry.model_ids,
        )
