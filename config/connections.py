"""Which market and which broker, and how to reach them: `config/connections.yaml` + environment.

`market: simulated|files|ibkr|tastytrade` and `broker: paper|ibkr|tastytrade` choose the world a
run sees and the venue approved orders go to. Every plain setting in the YAML can be overridden by
an environment variable (`HEDGEGRAPH_MARKET`, `HEDGEGRAPH_IBKR_PORT`, ...). Secrets come from the
environment only (`TASTYTRADE_CLIENT_SECRET`, `TASTYTRADE_REFRESH_TOKEN`): they are held as
`SecretStr`, so no repr, log line, JSON dump or error message shows them, and nothing here writes
them anywhere.

A real component is *configured* when the market or the broker names it; an unused one is "not
configured", which is not an error.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from config.settings import load_yaml

Market = Literal["simulated", "files", "ibkr", "tastytrade"]
BrokerName = Literal["paper", "ibkr", "tastytrade"]

# Environment variable -> (section, key). Plain settings only; secrets are read separately.
ENV_OVERRIDES: dict[str, tuple[str | None, str]] = {
    "HEDGEGRAPH_MARKET": (None, "market"),
    "HEDGEGRAPH_BROKER": (None, "broker"),
    "HEDGEGRAPH_DATA_DIR": ("files", "data_dir"),
    "HEDGEGRAPH_IBKR_HOST": ("ibkr", "host"),
    "HEDGEGRAPH_IBKR_PORT": ("ibkr", "port"),
    "HEDGEGRAPH_IBKR_CLIENT_ID": ("ibkr", "client_id"),
    "HEDGEGRAPH_IBKR_ACCOUNT": ("ibkr", "account"),
    "HEDGEGRAPH_IBKR_MARKET_DATA": ("ibkr", "market_data"),
    "HEDGEGRAPH_IBKR_TIMEOUT_S": ("ibkr", "timeout_s"),
    "HEDGEGRAPH_TASTYTRADE_SANDBOX": ("tastytrade", "sandbox"),
    "HEDGEGRAPH_TASTYTRADE_ACCOUNT": ("tastytrade", "account"),
    "HEDGEGRAPH_TASTYTRADE_API_URL": ("tastytrade", "api_url"),
}
TASTYTRADE_SECRET_ENV = "TASTYTRADE_CLIENT_SECRET"
TASTYTRADE_REFRESH_ENV = "TASTYTRADE_REFRESH_TOKEN"


class ConfigurationError(ValueError):
    """The connection configuration is invalid: one line saying which setting and why."""


class FilesConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The files market's directory: daily bars per ticker and Cboe quote tables per ticker and date.
    data_dir: str = ""


class IbkrConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(4002, ge=1, le=65535)
    client_id: int = Field(17, ge=0)
    account: str = ""
    market_data: Literal["live", "delayed"] = "delayed"
    timeout_s: float = Field(4.0, gt=0)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class TastytradeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sandbox: bool = True
    account: str = ""
    # Where the REST API lives when not the SDK's own (sandbox or production) address: a proxy, or a
    # local fake in tests. Empty: the SDK chooses by `sandbox`.
    api_url: str = ""
    client_secret: SecretStr | None = Field(None, repr=False)
    refresh_token: SecretStr | None = Field(None, repr=False)

    @property
    def has_credentials(self) -> bool:
        return self.client_secret is not None and self.refresh_token is not None

    def missing_credentials(self) -> list[str]:
        return [name for name, value in ((TASTYTRADE_SECRET_ENV, self.client_secret),
                                         (TASTYTRADE_REFRESH_ENV, self.refresh_token)) if value is None]


class Connections(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    market: Market = "simulated"
    broker: BrokerName = "paper"
    files: FilesConfig = FilesConfig()
    ibkr: IbkrConfig = IbkrConfig()
    tastytrade: TastytradeConfig = TastytradeConfig()

    def uses(self, name: str) -> bool:
        """Whether the market or the broker is `name` (that component is configured)."""
        return name in (self.market, self.broker)

    def public(self) -> dict:
        """Everything but the secrets (which are reported only as present or missing)."""
        data = self.model_dump(mode="json", exclude={"tastytrade": {"client_secret", "refresh_token"}})
        data["tastytrade"]["credentials"] = "present" if self.tastytrade.has_credentials else \
            "missing: " + ", ".join(self.tastytrade.missing_credentials())
        return data


def load_connections(environ: Mapping[str, str] | None = None, yaml_data: dict | None = None) -> Connections:
    """The YAML, overridden by the environment, validated. Raises `ConfigurationError`."""
    env = os.environ if environ is None else environ
    data = yaml_data if yaml_data is not None else load_yaml("connections.yaml")
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (data or {}).items()}
    for variable, (section, key) in ENV_OVERRIDES.items():
        value = env.get(variable)
        if value is None or value.strip() == "":
            continue
        if section is None:
            data[key] = value.strip()
        else:
            data.setdefault(section, {})[key] = value.strip()
    tasty = data.setdefault("tastytrade", {})
    for key in ("client_secret", "refresh_token"):
        if key in tasty:
            raise ConfigurationError(f"tastytrade.{key} must not be in a file: set it in the environment "
                                     f"({TASTYTRADE_SECRET_ENV if key == 'client_secret' else TASTYTRADE_REFRESH_ENV})")
    secret, refresh = env.get(TASTYTRADE_SECRET_ENV, "").strip(), env.get(TASTYTRADE_REFRESH_ENV, "").strip()
    tasty["client_secret"] = secret or None
    tasty["refresh_token"] = refresh or None
    try:
        return Connections.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        # The input is never echoed: a mistyped secret must not end up on a terminal or in a log.
        raise ConfigurationError(f"connection setting {where}: {first['msg']}") from None
