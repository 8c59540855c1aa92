"""Everything `reward-service feedback` takes: flags, or REWARD_FEEDBACK_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from reward_service.variables import OptionSettings


class FeedbackSettings(OptionSettings):
    """The ranking web app's settings; flags override REWARD_FEEDBACK_* variables."""

    model_config = SettingsConfigDict(env_prefix="REWARD_FEEDBACK_", extra="forbid")

    db: str = Field(
        "sqlite:///feedback.db",
        description="SQLAlchemy URL of the database, created on first use: sqlite:///FILE, or "
        "postgresql+psycopg://USER@HOST/NAME for a team.",
    )
    admin_key: SecretStr | None = Field(
        None,
        description="The key the admin pages need (X-Admin-Key header, or the login form); "
        "required to serve. REWARD_FEEDBACK_ADMIN_KEY keeps it out of the process list.",
    )
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8080, ge=0, le=65535, description="Port to bind.")
    reward_url: str | None = Field(
        None,
        description="A running reward service (http://HOST:PORT): the admin's quality page scores "
        "the completions that have no model scores yet and reports how often it agrees with "
        "the raters.",
    )
    reward_api_key: SecretStr | None = Field(
        None,
        description="The reward service's API key, if it needs one "
        "(REWARD_FEEDBACK_REWARD_API_KEY keeps it out of the process list).",
    )
    base_url: str | None = Field(
        None,
        description="The address raters open, for invitation links (default http://HOST:PORT); "
        "an https:// one makes the cookies Secure.",
    )
    max_comment_chars: int = Field(
        2000, ge=0, le=100_000, description="Longest comment a rater may leave."
    )
    reservation_s: int = Field(
        1800,
        ge=1,
        description="How long a served task page reserves its item for its rater: meanwhile the "
        "item counts them against the overlap, and a reload shows the same page. A page "
        "submitted later is still stored.",
    )
    max_body_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="Largest request body; larger ones get 413 unread.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )

    def public_url(self) -> str:
        """Where raters reach the app, without a trailing slash."""
        return (self.base_url or f"http://{self.host}:{self.port}").rstrip("/")

    def invitation_url(self, token: str) -> str:
        """The link a rater opens to sign in."""
        return f"{self.public_url()}/join/{token}"
