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
        assert set(doc["components"]["securitySchemes"]) >= {"bearer", "apiKey", "accessToken"}
        assert doc["paths"]["/health"]["get"]["security"] == []
        assert "/api/stream/start" in doc["paths"]  # seed endpoints from the HTTP map
        ids = doc["components"]["schemas"]["PointId"]["enum"]
        assert len(ids) == 23 and "stream_enable" in ids
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
