"""The HTTP surface both programs share: a small ASGI router (asgi), query-parameter checks
(params), Prometheus exposition from our own counters (metrics), and hypercorn on trio (serve).

Each program builds its own routes on top: tapio/server/http_app.py and
tapio/collector/http_app.py.
"""
