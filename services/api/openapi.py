"""The OpenAPI description of every route, and the offline Swagger UI page (assets from a PyPI package)."""
from __future__ import annotations

from functools import cache
from typing import Any

from services.common.model import AUTO, FITS, FORMATS, GRAVITIES, MAX_RENDITIONS

from .validation import MAX_EDGE, MAX_URL_LENGTH

WAIT_PARAM = {
    "name": "wait", "in": "query", "required": False,
    "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 30, "example": 10},
    "description": "Seconds to hold the answer until the task is SUCCESS or FAILURE; then, or after that long, "
                   "the usual answer.",
}
UUID_PARAM = {
    "name": "task_id", "in": "query", "required": True,
    "schema": {"type": "string", "format": "uuid"}, "description": "The id POST /thumbnail returned.",
}


def _json(schema_ref: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }
    if headers:
        response["headers"] = headers
    return response


RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "Malformed input (invalid JSON, malformed task id).",
        401: "THUMBS_AUTH=required and no valid API key was sent.",
        403: "The API key was revoked.",
        404: "Unknown task (or another key's); GET /thumbnail/file: also RENDITION_NOT_FOUND.",
        429: "Over the API key's rate; retry after Retry-After seconds (RateLimit-* headers say more).",
        413: "Request body over 16 KiB.",
        415: "Body is not application/json.",
        409: "The Idempotency-Key was used with another request, or its first request is still being accepted.",
        422: "Well-formed but invalid input.",
        503: "Kafka or Cassandra unavailable, or (POST) the backlog over THUMBS_MAX_BACKLOG, or (events) "
             "THUMBS_SSE_MAX_STREAMS streams already open; retry after Retry-After seconds.",
    }
    return {str(s): _json("Error", texts[s], RETRY_AFTER if s in (429, 503) else None) for s in statuses}


@cache
def openapi_spec() -> dict[str, Any]:
    status_props = {
        "message": {"type": "string"},
        "task_id": {"type": "string", "format": "uuid"},
        "status": {"type": "string", "enum": ["PENDING", "SUCCESS", "FAILURE"]},
        "stage": {"type": "string", "enum": ["PENDING", "FETCHED"], "description": "Finer in-progress state."},
        "base64_thumbnail_data": {"type": "string", "format": "byte"},
        "content_type": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "source_sha256": {"type": "string"},
        "error": {"$ref": "#/components/schemas/ErrorDetail"},
        "webhook": {"$ref": "#/components/schemas/WebhookDelivery"},
        "renditions": {"type": "array", "items": {"$ref": "#/components/schemas/RenditionResult"},
                       "description": "SUCCESS: every rendition, in request order (the top-level fields repeat the first)."},
    }
    rendition_props: dict[str, Any] = {
        "width": {"type": "integer", "minimum": 1, "maximum": MAX_EDGE, "default": 100},
        "height": {"type": "integer", "minimum": 1, "maximum": MAX_EDGE, "default": 100},
        "format": {"type": "string", "enum": [*FORMATS, AUTO], "default": "jpeg",
                   "description": "`auto`: AVIF, WebP and JPEG, GET /thumbnail/file choosing by the Accept header."},
        "quality": {"type": "integer", "minimum": 1, "maximum": 95, "default": 85},
        "fit": {"type": "string", "enum": list(FITS), "default": "contain",
                "description": "`contain`: inside the box, aspect kept; `cover`: exactly the box, cropped by `gravity`; "
                               "`pad`: exactly the box, the picture letterboxed on `background`."},
        "gravity": {"type": "string", "enum": list(GRAVITIES), "default": "center",
                    "description": "Where `cover` crops (only with it); `smart`: the most detailed part."},
        "background": {"type": "string", "pattern": "^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{8})$", "example": "#ffffff",
                       "description": "Behind transparent parts and padding; unset: transparent where the format "
                                      "has alpha, white in JPEG."},
        "enlarge": {"type": "boolean", "default": False,
                    "description": "Scale a source smaller than the box up (`cover` without it: the largest crop "
                                   "of the box's shape the source holds)."},
    }
    gravity_needs_cover = {
        "description": "422: gravity other than center needs fit cover.",
        "anyOf": [{"not": {"required": ["gravity"]}}, {"properties": {"gravity": {"enum": ["center"]}}},
                  {"required": ["fit"], "properties": {"fit": {"enum": ["cover"]}}}],
    }
    url_pattern = ("^[\\u0000-\\u0020]*[Hh][Tt][Tt][Pp][Ss]?://[^/?#\\s\\u0000-\\u0020\\u007f]+"
                   "[^\\s\\u0000-\\u0020\\u007f]*[\\u0000-\\u0020]*$")
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Thumbnail service",
            "version": "1",
            "description": "Submit an image URL, get a thumbnail by task id. Errors are "
            '`{"error": {"code", "message"}, "message"}`.',
        },
        "paths": {
            "/thumbnail": {
                "post": {
                    "summary": "Request a thumbnail",
                    "parameters": [{
                        "name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                        "description": "Retries with the same key and body within 24 hours answer the same task_id "
                                       "and create nothing; the same key with another body answers 409.",
                    }, WAIT_PARAM],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ThumbnailRequest"}}},
                    },
                    "responses": {
                        "200": _json("TaskStatus", "With `wait`: the task finished within it (as GET /thumbnail answers).", {
                            "Location": {"schema": {"type": "string"}, "description": "The status URL."}}),
                        "202": _json("Accepted", "Accepted: the request is durably queued.", {
                            "Location": {"schema": {"type": "string"}, "description": "The status URL."},
                            "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]},
                                                    "description": "The task of an earlier request with this key."}}),
                        **_errors(400, 401, 403, 409, 413, 415, 422, 429, 503),
                    },
                },
                "get": {
                    "summary": "Task status, with the thumbnail as base64 when done",
                    "parameters": [UUID_PARAM, WAIT_PARAM],
                    "responses": {
                        "200": _json("TaskStatus", "Finished: SUCCESS with data, or FAILURE with error."),
                        "202": _json("TaskStatus", "In progress.", RETRY_AFTER),
                        **_errors(400, 401, 403, 404, 503),
                    },
                },
            },
            "/thumbnail/file": {
                "get": {
                    "summary": "The thumbnail's bytes",
                    "parameters": [
                        UUID_PARAM,
                        {"name": "rendition", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_RENDITIONS - 1, "default": 0},
                         "description": "Which of the task's renditions, from 0 in request order; past the last: 404 "
                                        "RENDITION_NOT_FOUND."},
                        {"name": "Accept", "in": "header", "required": False, "schema": {"type": "string"},
                         "example": "image/avif,image/webp,*/*",
                         "description": "For a `format: auto` rendition: AVIF if named, else WebP if named, else JPEG "
                                        "(wildcards choose JPEG)."},
                        {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "The image.",
                            "headers": {"ETag": {"schema": {"type": "string"}, "description": "One per encoding."},
                                        "Cache-Control": {"schema": {"type": "string"}},
                                        "Vary": {"schema": {"type": "string"},
                                                 "description": "`Accept`, for a `format: auto` rendition."}},
                            "content": {f"image/{f}": {"schema": {"type": "string", "format": "binary"}} for f in FORMATS},
                        },
                        "202": _json("Error", "In progress.", RETRY_AFTER),
                        "304": {"description": "Not modified (If-None-Match matched the ETag)."},
                        "422": _json("Error", "The task failed; the body has its error code."),
                        **_errors(400, 401, 403, 404, 503),
                    },
                }
            },
            "/thumbnail/events": {
                "get": {
                    "summary": "Live task events (Server-Sent Events) until the task ends",
                    "description": "One `event: status` per status change, `id:` its sequence number, `data:` the JSON of "
                                   "GET /thumbnail without base64_thumbnail_data; closed after SUCCESS or FAILURE. A stream "
                                   "open THUMBS_SSE_MAX_SECONDS ends with `event: timeout` (the last status); a task store "
                                   "failure with `event: error` (an Error body).",
                    "parameters": [UUID_PARAM],
                    "responses": {
                        "200": {"description": "The event stream.",
                                "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                        **_errors(400, 401, 403, 404, 503),
                    },
                }
            },
            "/stats": {
                "get": {
                    "summary": "Live statistics: running totals and 10-second windows (from the stats stage)",
                    "description": "Totals since the stats stage's changelog began, and one entry per 10-second window with "
                                   "activity in the last `minutes`, oldest first. Replayed records count under `replayed` "
                                   "only. Latency percentiles are within ±5 %; null in a window without outcomes.",
                    "parameters": [{"name": "minutes", "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 1, "maximum": 60, "default": 60}}],
                    "responses": {
                        "200": _json("Stats", "The statistics."),
                        "503": _json("Error", "STATS_UNAVAILABLE: the stats stage is not answering.", RETRY_AFTER),
                        **_errors(400, 401, 403),
                    },
                }
            },
            "/health": {"get": {"summary": "Liveness (no dependencies)", "responses": {"200": _json("Health", "Alive.")}}},
            "/ready": {
                "get": {
                    "summary": "Readiness: Kafka and Cassandra reachable",
                    "responses": {"200": _json("Ready", "Ready."), "503": _json("Ready", "A dependency is down.")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Prometheus text format.",
                                          "content": {"text/plain": {"schema": {"type": "string"}}}}},
                }
            },
        },
        # Needed only with THUMBS_AUTH=required; the empty requirement keeps an open deployment's calls valid.
        "security": [{}, {"apiKey": []}],
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "`thumbs keys create` makes one: thk_<name>_<secret>."}},
            "schemas": {
                "ThumbnailRequest": {
                    "type": "object",
                    "required": ["source_image_url"],
                    "description": "One rendition from the top-level fields (all optional: a 100x100 JPEG by default), "
                                   "or 1 to 8 in `renditions`, all made from one fetch of the source; not both.",
                    "properties": {
                        "source_image_url": {"type": "string", "minLength": 1, "maxLength": MAX_URL_LENGTH,
                                             "pattern": url_pattern, "example": "http://127.0.0.2:8000/cat.jpg"},
                        **rendition_props,
                        "renditions": {"type": "array", "minItems": 1, "maxItems": MAX_RENDITIONS,
                                       "items": {"$ref": "#/components/schemas/Rendition"},
                                       "example": [{"width": 100, "height": 100},
                                                   {"width": 200, "height": 200, "format": "webp", "fit": "cover",
                                                    "gravity": "smart"},
                                                   {"width": 64, "height": 64, "format": "auto", "fit": "pad"}]},
                        "callback_url": {
                            "type": "string", "minLength": 1, "maxLength": MAX_URL_LENGTH, "pattern": url_pattern,
                            "example": "https://example.com/thumbs-hook",
                            "description": "POSTed the task's outcome when it ends, signed (README, \"Completion webhooks\"). "
                                           "422 WEBHOOKS_DISABLED without a signing secret, CALLBACK_FORBIDDEN_ADDRESS for "
                                           "a host that is not public.",
                        },
                    },
                    "allOf": [gravity_needs_cover, {
                        "description": "422 CONFLICTING_FIELDS: renditions and a top-level rendition field together.",
                        "anyOf": [{"not": {"required": ["renditions"]}},
                                  {"allOf": [{"not": {"required": [name]}} for name in rendition_props]}],
                    }],
                },
                "Rendition": {
                    "type": "object", "properties": rendition_props, "allOf": [gravity_needs_cover],
                    "description": "Every field optional: a 100x100 JPEG fitted inside the box by default.",
                },
                "RenditionResult": {
                    "type": "object", "required": ["rendition", "content_type", "width", "height", "deduplicated"],
                    "properties": {
                        "rendition": {"type": "object", "description": "The rendition as asked, defaults spelt out."},
                        "content_type": {"type": "string", "description": "image/jpeg for `format: auto`."},
                        "width": {"type": "integer", "description": "Of the thumbnail made."},
                        "height": {"type": "integer"},
                        "deduplicated": {"type": "boolean", "description": "Stored already: nothing was rendered."},
                        "formats": {"type": "array", "items": {"type": "string"},
                                    "description": "`format: auto`: the encodings GET /thumbnail/file chooses from."},
                        "base64_thumbnail_data": {"type": "string", "format": "byte",
                                                  "description": "JPEG for `format: auto`."},
                    },
                },
                "WebhookDelivery": {
                    "type": "object", "required": ["state", "attempts", "last_status"],
                    "description": "The completion webhook, for tasks with a callback_url.",
                    "properties": {
                        "state": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                        "attempts": {"type": "integer", "minimum": 0},
                        "last_status": {"type": "integer", "nullable": True,
                                        "description": "The receiver's last HTTP status; null: no answer yet."},
                    },
                },
                "Accepted": {"type": "object", "required": ["task_id"],
                             "properties": {"task_id": {"type": "string", "format": "uuid"}}},
                "TaskStatus": {"type": "object", "required": ["task_id", "status", "message"], "properties": status_props},
                "ErrorDetail": {"type": "object", "required": ["code", "message"],
                                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"$ref": "#/components/schemas/ErrorDetail"}, "message": {"type": "string"}},
                },
                "Counts": {
                    "type": "object",
                    "required": ["requested", "succeeded", "failed", "deduplicated", "replayed", "repeated", "failures_by_code"],
                    "description": "`replayed`: records re-published by thumbs replay (not in the other counts); "
                                   "`repeated`: a task's outcome published again by a restarted stage (counted once).",
                    "properties": {
                        **{name: {"type": "integer", "minimum": 0} for name in
                           ("requested", "succeeded", "failed", "deduplicated", "replayed", "repeated")},
                        "failures_by_code": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                    },
                },
                "Stats": {
                    "type": "object",
                    "required": ["window_seconds", "totals", "windows"],
                    "properties": {
                        "window_seconds": {"type": "integer", "example": 10},
                        "consumer_lag": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                                         "description": "Records each deployed stage's consumer group is behind, read "
                                                        "every 10 s (empty until the first reading).",
                                         "example": {"fetcher": 0, "resizer": 12, "projector": 0}},
                        "totals": {"$ref": "#/components/schemas/Counts"},
                        "windows": {"type": "array", "items": {"allOf": [
                            {"$ref": "#/components/schemas/Counts"},
                            {"type": "object", "required": ["start", "latency_ms"], "properties": {
                                "start": {"type": "string", "format": "date-time"},
                                "latency_ms": {"type": "object", "nullable": True, "properties": {
                                    p: {"type": "number"} for p in ("p50", "p95", "p99")}},
                            }},
                        ]}},
                    },
                },
                "Health": {"type": "object", "properties": {"status": {"type": "string"}}},
                "Ready": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string"},
                        "checks": {"type": "object", "additionalProperties": {"type": "string", "enum": ["ok", "down"]}},
                    },
                },
            }
        },
    }


DOCS_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>Thumbnail service API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""
