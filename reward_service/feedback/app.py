"""The ranking web app: the raters' pages (invitation, campaigns, task), the JSON API the task page
calls, and the admin pages (progress and quality, whose figures ``quality`` computes). Pages are
server-rendered Jinja2 (``templates/``); the JavaScript and CSS are plain files in ``static/``,
served by the app itself.

Raters sign in by opening their invitation link, which sets a cookie holding their token (only its
hash is stored); scripted raters may send it as ``Authorization: Bearer TOKEN`` instead. The
admin pages need the admin key: an ``X-Admin-Key`` header, or the login form's cookie. Every
refusal of the store is a ``FeedbackError`` with its status: JSON ``{"detail": ...}`` under
``/api/``, an HTML page elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_service.body_limit import BodySizeLimit, Refusal
from reward_service.docs_pages import DOCS_ASSETS_PATH, add_offline_docs
from reward_service.errors import describe_validation_errors
from reward_service.feedback import quality
from reward_service.feedback.settings import FeedbackSettings
from reward_service.feedback.store import (
    FLAGS,
    CampaignInfo,
    FeedbackError,
    RaterInfo,
    Store,
    Submission,
    ViewInfo,
)

HERE = Path(__file__).resolve().parent
RATER_COOKIE = "feedback_rater"
ADMIN_COOKIE = "feedback_admin"
RATER_COOKIE_MAX_AGE_S = 180 * 24 * 3600  # a campaign may run for months
ADMIN_COOKIE_MAX_AGE_S = 12 * 3600
SKIP_REASONS = (
    "I cannot judge this topic",
    "The prompt is unclear or broken",
    "The responses are unreadable",
    "Other",
)
MAX_SKIP_REASON_CHARS = 500
# Every page and answer: no script, style or font from anywhere but this app; never framed; the
# invitation token in /join/... never leaves in a Referer.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class NotSignedIn(FeedbackError):
    """No rater token with the request (401)."""

    status_code = 401


class AdminKeyNeeded(FeedbackError):
    """An admin page or API without the admin key (401)."""

    status_code = 401


# --- what the API takes and gives -----------------------------------------------------------


class TaskView(BaseModel):
    """One task page, as the rater's browser gets it. Nothing in it tells the rater about the
    policy (the item's source), the reward model's scores, gold rankings or other raters."""

    view_id: str = Field(description="The page's nonce: a judgement is submitted to it once.")
    campaign: str
    prompt: str
    completions: list[str] = Field(description="In the order shown (shuffled per view).")
    order: list[int] = Field(description="order[j]: the original index of completion j shown.")
    criteria: list[str] = Field(description="One ranking per criterion.")
    k: int

    @classmethod
    def of(cls, view: ViewInfo, campaign: CampaignInfo) -> TaskView:
        return cls(
            view_id=view.view_id,
            campaign=campaign.name,
            prompt=view.prompt,
            completions=view.shown,
            order=view.order,
            criteria=campaign.criteria,
            k=campaign.k,
        )


class JudgementBody(BaseModel):
    """A submitted task page. Ranks are in the item's ORIGINAL completion order (the page maps
    its display order back), 1 = best, ties share a rank: [1, 1, 3, 4]."""

    model_config = ConfigDict(extra="forbid")

    ranks: dict[str, list[int]] | None = Field(
        None, description="criterion -> ranks; required unless skipped."
    )
    skipped: bool = False
    skip_reason: str | None = Field(None, max_length=MAX_SKIP_REASON_CHARS)
    flags: dict[str, list[Literal[FLAGS]]] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="original completion index -> flags."
    )
    confidence: int | None = Field(None, description="1 (barely) .. 4 (very clearly).")
    comment: str = Field("", description="At most the server's max_comment_chars.")
    time_spent_ms: int = Field(0, ge=0, description="Time the page was visible.")

    def submission(self) -> Submission:
        return Submission(
            ranks=self.ranks,
            skipped=self.skipped,
            skip_reason=self.skip_reason,
            flags={index: list(flags) for index, flags in self.flags.items()},
            confidence=self.confidence,
            comment=self.comment,
            time_spent_ms=self.time_spent_ms,
        )


class SavedJudgement(BaseModel):
    judgement_id: int = Field(description="Committed to the database before this answer.")


class CampaignSummary(BaseModel):
    name: str
    criteria: list[str]
    k: int


class NewRater(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="A display name, nothing more.")


class Invitation(BaseModel):
    name: str
    url: str = Field(description="The invitation link: opening it signs the rater in.")


# --- pure-ASGI middleware -------------------------------------------------------------------


def _body_too_large(max_body_bytes: int) -> Refusal:
    def refusal(size: str) -> Response:
        detail = f"the request body has {size}; this server takes at most {max_body_bytes} bytes"
        return JSONResponse({"detail": detail}, 413)

    return refusal


class SecurityHeaders:
    """SECURITY_HEADERS on every answer; pages and API answers are never cached (a page holds
    a one-time view id), static files are."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith(("/static/", f"{DOCS_ASSETS_PATH}/"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                # A page with its own policy keeps it (/docs: its inline script's hash); two
                # policies would both apply, so the stricter default would block that script.
                own = {name.lower() for name, _ in headers}
                headers += [header for header in SECURITY_HEADERS if header[0] not in own]
                if not cacheable:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- who is asking ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """What the app checks requests against (``app.state.access``)."""

    store: Store
    admin_key: str
    admin_cookie: str  # a digest of the key, not the key

    @classmethod
    def of(cls, store: Store, admin_key: str) -> Access:
        digest = hmac.new(admin_key.encode(), b"feedback admin session", hashlib.sha256)
        return cls(store, admin_key, digest.hexdigest())


def signed_in_rater(request: Request) -> RaterInfo:
    """The rater whose token the request carries: the invitation cookie, or (scripted raters)
    ``Authorization: Bearer TOKEN``."""
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    token = bearer.strip() if scheme.lower() == "bearer" else request.cookies.get(RATER_COOKIE)
    if not token:
        raise NotSignedIn("not signed in: open your invitation link first")
    return request.app.state.access.store.rater_for_token(token)


def require_admin(request: Request) -> None:
    """The admin key, as an ``X-Admin-Key`` header or the login form's cookie (constant-time)."""
    access: Access = request.app.state.access
    key = request.headers.get("x-admin-key")
    if key is not None:
        if hmac.compare_digest(key.encode(), access.admin_key.encode()):
            return
        raise AdminKeyNeeded("wrong admin key")
    cookie = request.cookies.get(ADMIN_COOKIE, "")
    if not hmac.compare_digest(cookie.encode(), access.admin_cookie.encode()):
        raise AdminKeyNeeded("the admin pages need the admin key (X-Admin-Key header)")


SignedIn = Annotated[RaterInfo, Depends(signed_in_rater)]
Admin = Depends(require_admin)


# --- the app --------------------------------------------------------------------------------


def create_app(settings: FeedbackSettings) -> FastAPI:
    """The ranking app over the database at ``settings.db`` (created or upgraded here)."""
    if settings.admin_key is None or not settings.admin_key.get_secret_value():
        raise ValueError("the feedback app needs an admin key: --admin-key or "
                         "REWARD_FEEDBACK_ADMIN_KEY")  # fmt: skip
    store = Store(
        settings.db,
        max_comment_chars=settings.max_comment_chars,
        reservation_s=settings.reservation_s,
    )
    access = Access.of(store, settings.admin_key.get_secret_value())
    secure_cookies = settings.public_url().startswith("https://")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["figure"] = _figure

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(
        title="Ranking",
        description="People rank a policy's completions; the rankings train the reward model.",
        version="1",
        lifespan=lifespan,
        # /docs from the files a package ships, not a CDN: it works offline (docs_pages.py)
        docs_url=None,
        redoc_url=None,
    )
    add_offline_docs(app)
    app.state.access = access
    app.add_middleware(
        BodySizeLimit,
        max_body_bytes=settings.max_body_bytes,
        refusal=_body_too_large(settings.max_body_bytes),
    )
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def error_page(request: Request, status_code: int, message: str) -> Response:
        if is_api(request):
            return JSONResponse({"detail": message}, status_code)
        if status_code == 401 and request.url.path.startswith("/admin"):
            return page(request, "admin_login.html", 401, error=None)
        hints = {
            401: "Open your invitation link again on this browser to sign in.",
            403: "Ask the campaign's organiser for a new invitation link.",
        }
        titles = {401: "Not signed in", 403: "Not allowed", 404: "Not found", 409: "Conflict"}
        return page(
            request,
            "error.html",
            status_code,
            status=status_code,
            title=titles.get(status_code, "Error"),
            message=message,
            hint=hints.get(status_code),
        )

    @app.exception_handler(FeedbackError)
    async def _on_feedback_error(request: Request, error: FeedbackError) -> Response:
        return error_page(request, error.status_code, error.message)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, error: RequestValidationError) -> Response:
        return error_page(request, 422, describe_validation_errors(error.errors()))

    @app.exception_handler(HTTPException)
    async def _on_http_error(request: Request, error: HTTPException) -> Response:
        if error.status_code == 400:  # FastAPI's "error parsing the body"
            return error_page(request, 422, "the body is not valid JSON")
        return error_page(request, error.status_code, str(error.detail))

    # --- raters' pages ---

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/campaigns", 303)

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/join/{token}", response_class=HTMLResponse, include_in_schema=False)
    def join(request: Request, token: str) -> HTMLResponse:
        """Signs the rater in on this browser: an HttpOnly, SameSite=Strict cookie."""
        found = store.rater_for_token(token)
        campaigns = store.campaigns()
        next_url = (
            request.url_for("task_page", name=campaigns[0].name).path
            if len(campaigns) == 1
            else request.url_for("campaigns_page").path
        )
        response = page(request, "join.html", rater=found.name, next_url=next_url)
        response.set_cookie(
            RATER_COOKIE,
            token,
            max_age=RATER_COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=secure_cookies,
        )
        return response

    @app.get("/campaigns", response_class=HTMLResponse, include_in_schema=False)
    def campaigns_page(request: Request, who: SignedIn) -> HTMLResponse:
        return page(request, "campaigns.html", rater=who.name, campaigns=store.campaigns())

    @app.get("/campaigns/{name}/task", response_class=HTMLResponse, include_in_schema=False)
    def task_page(request: Request, name: str, who: SignedIn) -> HTMLResponse:
        """The task page, with the rater's open page in it (or their next item, a new view);
        the page's script fetches the next ones from the API."""
        campaign = store.campaign(name)
        view = store.next_view(name, who.id)
        return page(
            request,
            "task.html",
            rater=who.name,
            campaign=campaign,
            view=TaskView.of(view, campaign).model_dump() if view else None,
            max_comment_chars=settings.max_comment_chars,
            skip_reasons=SKIP_REASONS,
        )

    # --- the raters' API ---

    @app.get("/api/campaigns")
    def list_campaigns(who: SignedIn) -> list[CampaignSummary]:
        return [CampaignSummary(name=c.name, criteria=c.criteria, k=c.k) for c in store.campaigns()]

    @app.get(
        "/api/campaigns/{name}/next",
        response_model=TaskView,
        responses={204: {"description": "Nothing is left for this rater."}},
    )
    def next_task(name: str, who: SignedIn) -> Response | TaskView:
        """The rater's open page while it is reserved for them (a reload shows the same task),
        else their next item as a new view (shuffled order), reserved for them."""
        campaign = store.campaign(name)
        view = store.next_view(name, who.id)
        return TaskView.of(view, campaign) if view else Response(status_code=204)

    @app.post("/api/views/{view_id}/judgement", status_code=201)
    def submit(view_id: str, body: JudgementBody, who: SignedIn) -> SavedJudgement:
        """Stores the judgement of one view; the answer comes after the commit. 409 when the view
        (or the item, by this rater) was judged already, 403 for another rater's view."""
        return SavedJudgement(judgement_id=store.submit(view_id, who.id, body.submission()))

    # --- admin ---

    @app.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    def admin_page(request: Request) -> HTMLResponse:
        require_admin(request)
        rows = [(campaign, store.progress(campaign.name)) for campaign in store.campaigns()]
        return page(request, "admin_campaigns.html", rows=rows, invitation=None)

    @app.post("/admin/login", include_in_schema=False)
    def admin_login(request: Request, key: Annotated[str, Form()]) -> Response:
        if not hmac.compare_digest(key.encode(), access.admin_key.encode()):
            return page(request, "admin_login.html", 401, error="That is not the admin key.")
        response = RedirectResponse(request.url_for("admin_page").path, 303)
        response.set_cookie(
            ADMIN_COOKIE,
            access.admin_cookie,
            max_age=ADMIN_COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=secure_cookies,
        )
        return response

    @app.post("/admin/logout", include_in_schema=False)
    def admin_logout(request: Request) -> RedirectResponse:
        response = RedirectResponse(request.url_for("admin_page").path, 303)
        response.delete_cookie(ADMIN_COOKIE, httponly=True, samesite="strict")
        return response

    @app.post("/admin/raters", response_class=HTMLResponse, include_in_schema=False)
    def admin_invite(request: Request, name: Annotated[str, Form()]) -> HTMLResponse:
        require_admin(request)
        invitation = invite(name)
        rows = [(campaign, store.progress(campaign.name)) for campaign in store.campaigns()]
        return page(request, "admin_campaigns.html", rows=rows, invitation=invitation)

    @app.get(
        "/admin/campaigns/{name}",
        response_class=HTMLResponse,
        include_in_schema=False,
        name="admin_campaign_page",
    )
    def admin_campaign_page(request: Request, name: str) -> HTMLResponse:
        require_admin(request)
        return page(request, "admin_campaign.html", report=campaign_report(name))

    @app.get("/api/admin/campaigns", dependencies=[Admin])
    def admin_campaigns() -> list[dict]:
        return [
            {**quality.campaign_json(campaign), "progress": asdict(store.progress(campaign.name))}
            for campaign in store.campaigns()
        ]

    @app.get("/api/admin/campaigns/{name}", dependencies=[Admin])
    def admin_campaign(name: str) -> dict:
        """Progress and quality: agreement between raters, with the consensus and gold, and the
        reward model's agreement with the raters."""
        return quality.json_safe(campaign_report(name))

    @app.post("/api/admin/raters", status_code=201, dependencies=[Admin])
    def admin_new_rater(body: NewRater) -> Invitation:
        return invite(body.name)

    def invite(name: str) -> Invitation:
        token = store.add_rater(name)
        return Invitation(name=name, url=settings.invitation_url(token))

    def campaign_report(name: str) -> dict:
        api_key = settings.reward_api_key.get_secret_value() if settings.reward_api_key else None
        return quality.campaign_report(
            store, name, reward_url=settings.reward_url, reward_api_key=api_key
        )

    return app


def _figure(value: Any, digits: int = 2) -> str:
    """A figure on a page: rounded, and a dash where there was nothing to compute it from."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"
