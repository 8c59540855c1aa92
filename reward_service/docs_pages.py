"""`/docs` (Swagger UI) served from the files the `fastapi-offline` package ships, so the page works
on a machine with no internet access. FastAPI's default page loads its script and styles from a
CDN, which leaves it blank there. Both web apps (the reward service and the ranking app) call
`add_offline_docs`; this is FastAPI's documented way of self-hosting the docs assets.

`/redoc` is off in both apps: one browsable page of the schema is enough, and ReDoc injects
inline styles that the ranking app's Content-Security-Policy forbids.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
# Under /docs, so that one path prefix covers the page and what it loads.
DOCS_ASSETS_PATH = "/docs/assets"
# swagger-ui-bundle.js, swagger-ui.css and favicon.png (Swagger UI 5, as FastAPI's default page).
SWAGGER_UI_FILES = importlib.resources.files("fastapi_offline") / "static"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def add_offline_docs(app: FastAPI) -> None:
    """Serves Swagger UI at /docs and its files under /docs/assets, neither in the schema.
    The app must be created with `docs_url=None, redoc_url=None`."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("create the app with docs_url=None and redoc_url=None")
    if app.openapi_url is None:
        raise ValueError("the docs page needs the app's OpenAPI schema (openapi_url)")
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=str(SWAGGER_UI_FILES)), name="docs-assets")
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png",
        oauth2_redirect_url=None,  # neither app uses OAuth2
        swagger_ui_parameters=app.swagger_ui_parameters,
    )
    headers = {"Content-Security-Policy": _content_security_policy(page.body.decode())}

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(page.body, headers=headers)


def _content_security_policy(page: str) -> str:
    """Scripts, styles, images and fetches from this server only: the page's one inline script
    (it starts Swagger UI) is allowed by its hash."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
