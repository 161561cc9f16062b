"""/healthz and /readyz, the same for both programs."""
import time

from tapio import __version__
from tapio.http.asgi import json_response


def add_health_routes(router, program, surface, readiness):
    """`surface.started`: the wall time the process started; `readiness(surface)` -> (ready,
    {check: {"ok": bool, "detail": str}})."""

    @router.get("/healthz")
    def healthz(request):
        return {"status": "ok", "program": program, "version": __version__,
                "uptime_seconds": round(time.time() - surface.started, 3)}

    @router.get("/readyz")
    def readyz(request):
        ready, checks = readiness(surface)
        body = {"ready": ready, "checks": checks,
                "not_ready": [f"{name}: {c['detail']}" for name, c in checks.items() if not c["ok"]]}
        return json_response(body, 200 if ready else 503)
