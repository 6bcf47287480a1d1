"""/api/openapi.json validates as OpenAPI 3 (openapi-spec-validator), and every operation it lists answers on the running server."""
import json
import re
import urllib.error
import urllib.request

from openapi_spec_validator import validate

from conftest import Server


def test_openapi_validates_and_matches_the_router():
    s = Server()
    try:
        with urllib.request.urlopen(s.http_base + "/api/openapi.json", timeout=10) as r:
            doc = json.load(r)
        validate(doc)
        assert "/api/routes/{route}/outputs/{name}/move" in doc["paths"]
        # Roles are part of the document, and the API key endpoints are in it.
        assert "admin" in doc["paths"]["/api/routes"]["post"]["description"]
        assert "admin" in doc["paths"]["/api/apikeys"]["post"]["description"]
        assert "/api/apikeys/{name}" in doc["paths"]
        # Alarms (issue 21): reads for viewers, the ack for operators.
        assert "operator" in doc["paths"]["/api/alarms/{point}/ack"]["post"]["description"]
        assert "viewer" in doc["paths"]["/api/alarms/history"]["get"]["description"]
        # Users (admin) and the exports (viewer, files).
        for m in ("get", "post"):
            assert "Role needed: admin" in doc["paths"]["/api/users"][m]["description"]
        assert set(doc["paths"]["/api/users/{name}"]) == {"put", "delete"}
        for p, ctype in (("/api/export/ede.csv", "text/csv"), ("/api/export/ede-states.csv", "text/csv"),
                         ("/api/export/modbus-map.csv", "text/csv"), ("/api/export/modbus-map.md", "text/markdown")):
            op = doc["paths"][p]["get"]
            assert "Role needed: viewer" in op["description"] and ctype in op["responses"]["200"]["content"], p
        assert set(doc["components"]["securitySchemes"]) >= {"bearer", "apiKey", "accessToken"}
        assert doc["paths"]["/health"]["get"]["security"] == []
        assert "/api/stream/start" in doc["paths"]  # seed endpoints from the HTTP map
        # The seed's 23 ids by name, route block points by pattern.
        any_of = doc["components"]["schemas"]["PointId"]["anyOf"]
        ids = next(a["enum"] for a in any_of if "enum" in a)
        assert len(ids) == 23 and "stream_enable" in ids
        pattern = next(a["pattern"] for a in any_of if "pattern" in a)
        assert re.match(pattern, "route.3.output_enable.2") and not re.match(pattern, "x")
        # Every documented operation is routed: it may refuse the request
        # (400/401/404 for a missing route/point/body), but never with 405,
        # and a 404 must be our JSON error, not the router's empty one.
        for path, ops in doc["paths"].items():
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            for method in ops:
                req = urllib.request.Request(s.http_base + concrete, method=method.upper(),
                                             data=b"{}" if method in ("post", "put") else None,
                                             headers={"content-type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        status, body = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, body = e.code, e.read()
                assert status != 405, (method, path)
                if status == 404:
                    assert b"error" in body, (method, path, body)
    finally:
        s.stop()


ROUTE_CONFIG = """
primary_route = "r"
[telemetry]
enabled = false
[[route]]
name = "r"
[[route.input]]
name = "in0"
type = "udp"
bind = "127.0.0.1:0"
[[route.output]]
name = "h"
type = "http"
"""


def test_every_response_validates_against_the_document(tmp_path):
    """openapi-core checks what the server really sends (null values, errors, text) against the document it publishes."""
    from openapi_core import OpenAPI
    from openapi_core.testing import MockRequest, MockResponse

    cfg = tmp_path / "c.toml"
    cfg.write_text(ROUTE_CONFIG)
    s = Server(config=cfg)
    try:
        with urllib.request.urlopen(s.http_base + "/api/openapi.json", timeout=10) as r:
            doc = json.load(r)
        validate(doc)
        api = OpenAPI.from_dict(doc)

        def call(method, path, body=None):
            req = urllib.request.Request(
                s.http_base + path, method=method.upper(),
                data=None if body is None else json.dumps(body).encode(),
                headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    status, data, ctype = r.status, r.read(), r.headers.get("content-type")
            except urllib.error.HTTPError as e:
                status, data, ctype = e.code, e.read(), e.headers.get("content-type")
            api.validate_response(
                MockRequest("http://localhost", method, path,
                            data=None if body is None else json.dumps(body)),
                MockResponse(data, status_code=status,
                             content_type=(ctype or "application/json").split(";")[0]))
            return status, data

        # gpu_usage has no source with telemetry off: its value is null.
        status, data = call("get", "/api/points")
        points = json.loads(data)
        assert status == 200 and any(p["value"] is None for p in points)
        # Every GET operation, with real names substituted.
        subst = {"{id}": "gpu_usage", "{route}": "r", "{number}": "1"}
        for path, ops in doc["paths"].items():
            if "get" not in ops:
                continue
            concrete = path
            for k, v in subst.items():
                concrete = concrete.replace(k, v)
            concrete = concrete.replace("inputs/{name}", "inputs/in0").replace("outputs/{name}", "outputs/h")
            concrete = concrete.replace("{name}", "x")
            call("get", concrete)
        # Writes, a release (null) and refusals.
        assert call("post", "/api/points/recording_enable", {"value": True})[0] == 200
        assert call("post", "/api/points/recording_enable", {"value": None})[0] == 200
        assert call("post", "/api/points/recording_enable", {"value": "maybe"})[0] == 422
        assert call("get", "/api/points/nope")[0] == 404
        status, data = call("get", "/api/points/recording_enable/history")
        assert status == 200
    finally:
        s.stop()
