"""The wire format, declared once: every request and response body as a pydantic model. The edge
validates requests with them (``decode``, after the strict JSON reader) and the served OpenAPI
document is generated from them (``web.openapi``)."""
