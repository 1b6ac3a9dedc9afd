"""``GET /metrics``: Prometheus text format, optionally behind METRICS_TOKEN."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app import metrics
from app.api.deps import (
    BearerHeader,
    ServicesDep,
    TokenHeader,
    client_address,
    offered_credential,
)
from app.api.errors import error_responses

router = APIRouter(tags=["service"])


@router.get(
    "/metrics",
    response_class=Response,
    responses=error_responses("token"),
    summary="Prometheus metrics (Bearer METRICS_TOKEN when that is set)",
)
async def prometheus_metrics(
    request: Request,
    services: ServicesDep,
    x_auth_token: TokenHeader = None,
    authorization: BearerHeader = None,
) -> Response:
    expected = services.settings.access.metrics_token
    if expected is not None:
        # Behind the same brake as upload tokens: guesses from one address are limited.
        await to_thread.run_sync(
            services.gatekeeper.check_secret,
            offered_credential(x_auth_token, authorization),
            expected.get_secret_value(),
            client_address(request),
        )
    # Multiprocess mode reads every worker's files: not on the event loop.
    body, content_type = await to_thread.run_sync(metrics.render)
    return Response(body, media_type=content_type)
