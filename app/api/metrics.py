"""``GET /metrics``: Prometheus text format, optionally behind METRICS_TOKEN."""

from __future__ import annotations

import hmac

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import Response

from app import metrics
from app.api.deps import BearerHeader, ServicesDep, TokenHeader, offered_credential
from app.api.errors import ApiError

router = APIRouter(tags=["service"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics (Bearer METRICS_TOKEN when that is set)",
)
async def prometheus_metrics(
    services: ServicesDep, x_auth_token: TokenHeader = None, authorization: BearerHeader = None
) -> Response:
    expected = services.settings.metrics_token
    if expected is not None:
        offered = offered_credential(x_auth_token, authorization)
        if not offered:
            raise ApiError(
                401, "missing_token", "METRICS_TOKEN is required", {"WWW-Authenticate": "Bearer"}
            )
        if not hmac.compare_digest(offered.encode(), expected.get_secret_value().encode()):
            raise ApiError(403, "invalid_token", "the metrics token is not valid")
    # Multiprocess mode reads every worker's files: not on the event loop.
    body, content_type = await to_thread.run_sync(metrics.render)
    return Response(body, media_type=content_type)
