"""`hedgegraph doctor` and the connection configuration: defaults work, unused brokers are "not
configured" (not errors), a closed port and missing credentials are named precisely, secrets never
show."""
from __future__ import annotations

import json
import logging
import socket

import pytest

from config.connections import ConfigurationError, load_connections
from service.cli import app
from tests.fake_tws import FakeTws

SECRET = "s3cr3t-client-secret-value"
REFRESH = "r3fr3sh-token-value"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checks(result) -> dict:
    return {c["component"]: c for c in json.loads(result.stdout)["checks"]}


def test_defaults_are_simulated_and_paper_and_real_brokers_are_not_configured():
    conn = load_connections({})
    assert (conn.market, conn.broker) == ("simulated", "paper")
    assert not conn.uses("ibkr") and not conn.uses("tastytrade")


def test_environment_overrides_and_bad_values_are_one_clear_line():
    conn = load_connections({"HEDGEGRAPH_BROKER": "ibkr", "HEDGEGRAPH_IBKR_PORT": "7497", "HEDGEGRAPH_IBKR_CLIENT_ID": "3"})
    assert conn.broker == "ibkr" and conn.ibkr.port == 7497 and conn.ibkr.client_id == 3
    with pytest.raises(ConfigurationError, match="connection setting broker"):
        load_connections({"HEDGEGRAPH_BROKER": "robinhood"})
    with pytest.raises(ConfigurationError, match="ibkr.port"):
        load_connections({"HEDGEGRAPH_IBKR_PORT": "99999"})
    with pytest.raises(ConfigurationError, match="must not be in a file"):
        load_connections({}, yaml_data={"tastytrade": {"refresh_token": "x"}})


def test_secrets_never_appear_in_repr_dumps_or_errors():
    env = {"TASTYTRADE_CLIENT_SECRET": SECRET, "TASTYTRADE_REFRESH_TOKEN": REFRESH, "HEDGEGRAPH_BROKER": "tastytrade"}
    conn = load_connections(env)
    assert conn.tastytrade.client_secret.get_secret_value() == SECRET
    for text in (repr(conn), str(conn), json.dumps(conn.public()), conn.model_dump_json()):
        assert SECRET not in text and REFRESH not in text
    assert conn.public()["tastytrade"]["credentials"] == "present"
    with pytest.raises(ConfigurationError) as err:
        load_connections({**env, "HEDGEGRAPH_TASTYTRADE_SANDBOX": SECRET})
    assert SECRET not in str(err.value)


def test_doctor_json_on_defaults_reports_the_embedded_defaults_working(cli_env, monkeypatch):
    for name in ("HEDGEGRAPH_MARKET", "HEDGEGRAPH_BROKER", "TASTYTRADE_CLIENT_SECRET", "TASTYTRADE_REFRESH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    result = cli_env.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.stdout
    found = checks(result)
    assert [found[c]["status"] for c in ("configuration", "database", "market", "broker")] == ["ok"] * 4
    assert "simulated market" in found["market"]["detail"] and "paper broker" in found["broker"]["detail"]
    assert found["ibkr"]["status"] == "not_configured" and found["tastytrade"]["status"] == "not_configured"
    for source in ("reddit", "google_trends", "finbert"):  # each social source's state, off by default
        assert found[f"social:{source}"]["status"] == "not_configured", found[f"social:{source}"]
    assert json.loads(result.stdout)["ok"] is True


def test_doctor_reports_social_sources_that_are_on_and_a_finbert_model_that_is_missing(cli_env, monkeypatch, tmp_path):
    monkeypatch.setenv("REDDIT_CLIENT_ID", "id")
    monkeypatch.setenv("REDDIT_CLIENT_SECRET", "not-shown")
    monkeypatch.setenv("HEDGEGRAPH_FINBERT_MODEL", str(tmp_path / "no-such-model"))
    result = cli_env.invoke(app, ["doctor", "--json"])
    found = checks(result)
    assert found["social:reddit"]["status"] == "ok" and "wallstreetbets" in found["social:reddit"]["detail"]
    assert found["social:finbert"]["status"] == "error" and result.exit_code == 1
    assert "not-shown" not in result.stdout


def test_doctor_names_a_closed_ibkr_port(cli_env, monkeypatch):
    port = free_port()
    monkeypatch.setenv("HEDGEGRAPH_BROKER", "ibkr")
    monkeypatch.setenv("HEDGEGRAPH_IBKR_PORT", str(port))
    result = cli_env.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 1
    ibkr = checks(result)["ibkr"]
    assert ibkr["status"] == "error"
    assert ibkr["detail"].startswith(f"port {port} on 127.0.0.1 is closed (connection refused)")


async def test_doctor_reaches_a_listening_tws_and_names_the_account(monkeypatch):
    from config.connections import load_connections as load
    from brokers.ibkr import probe

    tws = await FakeTws().start()
    try:
        conn = load({"HEDGEGRAPH_BROKER": "ibkr", "HEDGEGRAPH_IBKR_PORT": str(tws.port)})
        result = await probe(conn.ibkr)
        assert result["status"] == "ok" and "DU1234567" in result["detail"], result
        wrong = load({"HEDGEGRAPH_BROKER": "ibkr", "HEDGEGRAPH_IBKR_PORT": str(tws.port),
                      "HEDGEGRAPH_IBKR_ACCOUNT": "U999"})
        result = await probe(wrong.ibkr)
        assert result["status"] == "error" and "account U999 is not managed" in result["detail"]
        # As the market: which market data this login gets, or why it gets none.
        result = await probe(conn.ibkr, market_data=True)
        assert result["status"] == "error" and "IBKR error 354" in result["detail"] \
            and "permission missing" in result["detail"]
        tws.option_quotes[("SPY", "", 0.0, "")] = (601.0, 601.1, -1, -2, -2, -2, -2, -1)
        result = await probe(conn.ibkr, market_data=True)
        assert result["status"] == "ok" and result["detail"].endswith("SPY market data: delayed"), result
        live = load({"HEDGEGRAPH_MARKET": "ibkr", "HEDGEGRAPH_IBKR_PORT": str(tws.port),
                     "HEDGEGRAPH_IBKR_MARKET_DATA": "live"})
        result = await probe(live.ibkr, market_data=True)
        assert result["status"] == "warning" and "although live was requested" in result["detail"]
    finally:
        await tws.stop()


def test_doctor_says_which_tastytrade_credentials_are_missing_and_never_prints_them(cli_env, monkeypatch, caplog):
    monkeypatch.setenv("HEDGEGRAPH_MARKET", "tastytrade")
    monkeypatch.setenv("TASTYTRADE_CLIENT_SECRET", SECRET)
    monkeypatch.delenv("TASTYTRADE_REFRESH_TOKEN", raising=False)
    caplog.set_level(logging.DEBUG)
    result = cli_env.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 1
    tasty = checks(result)["tastytrade"]
    assert tasty["status"] == "error" and tasty["detail"] == \
        "credentials missing: set TASTYTRADE_REFRESH_TOKEN in the environment"
    assert SECRET not in result.stdout and SECRET not in caplog.text
    market = checks(result)["market"]
    assert market["status"] == "ok" and "decision runs prefetch chains, quotes, Greeks and daily bars from tastytrade" \
        in market["detail"]
