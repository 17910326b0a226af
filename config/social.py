"""Social-source settings: what to read from YAML (`social:` in defaults.yaml), secrets and
switches from the environment only.

Each source is off unless the environment turns it on, so with nothing set a run uses the
simulated feed and the lexicon exactly as before. Credentials are `repr=False` and never logged.
"""
from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.settings import load_yaml


class RedditConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    subreddits: list[str] = ["wallstreetbets", "stocks", "options", "investing"]
    user_agent: str = "hedgegraph/0.1 (read-only social analyst)"
    max_items_per_listing: int = Field(500, ge=1, le=1000)
    include_comments: bool = True
    max_retries: int = Field(3, ge=0, le=8)


class TrendsConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    keyword_suffix: str = " stock"
    keywords: dict[str, str] = {}
    cache_hours: float = Field(6, ge=0)
    max_retries: int = Field(3, ge=0, le=8)

    def keyword(self, ticker: str) -> str:
        return self.keywords.get(ticker, f"{ticker}{self.keyword_suffix}")


class SentimentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    batch_size: int = Field(16, ge=1, le=512)


class StoriesConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    merge_threshold: float = Field(0.80, gt=0, le=1)
    merge_window_hours: float = Field(48, gt=0)


class SocialConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    reddit: RedditConfig = RedditConfig()
    trends: TrendsConfig = TrendsConfig()
    sentiment: SentimentConfig = SentimentConfig()
    stories: StoriesConfig = StoriesConfig()


class SocialEnvironment(BaseSettings):
    """Switches, endpoints and credentials from the environment (never from YAML or run records)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    reddit_client_id: str | None = Field(default=None, validation_alias="REDDIT_CLIENT_ID", repr=False)
    reddit_client_secret: str | None = Field(default=None, validation_alias="REDDIT_CLIENT_SECRET", repr=False)
    # Endpoint overrides exist for local fakes (tests) and proxies; unset means reddit.com.
    reddit_oauth_url: str | None = Field(default=None, validation_alias="REDDIT_OAUTH_URL")
    reddit_url: str | None = Field(default=None, validation_alias="REDDIT_URL")
    trends: bool = Field(default=False, validation_alias="HEDGEGRAPH_TRENDS")
    trends_url: str | None = Field(default=None, validation_alias="HEDGEGRAPH_TRENDS_URL")
    finbert_model: str | None = Field(default=None, validation_alias="HEDGEGRAPH_FINBERT_MODEL")

    @property
    def reddit_enabled(self) -> bool:
        return bool(self.reddit_client_id and self.reddit_client_secret)

    @property
    def any_enabled(self) -> bool:
        return self.reddit_enabled or self.trends or bool(self.finbert_model)


@lru_cache(maxsize=1)
def social_config() -> SocialConfig:
    return SocialConfig.model_validate(load_yaml("defaults.yaml").get("social") or {})


def social_environment() -> SocialEnvironment:
    return SocialEnvironment()
