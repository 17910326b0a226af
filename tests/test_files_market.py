"""The files market: a decision run on a directory of daily bars and Cboe quote tables, its run id
naming the data it read, and approvals that re-quote from those same files."""
from __future__ import annotations

import shutil
from datetime import datetime

import pytest

from config.settings import defaults
from graph.runner import RunRequest
from service import approvals
from service.approvals import Decision, ServiceContext
from service.cli import app
from service.commands.decide import files_decision_time
from service.markets import build_market, market_source
from service.operations import run_decision
from tests.market_files import CHAIN_DAY, write_market_dir
from tests.test_cli_errors import call
from tests.test_order_manager import Clock
from tools.chain import NEW_YORK
from tools.providers.chain_files import ChainFileOverlay
from tools.providers.files import FilesMarket
from tools.providers.simulated import SimulatedMarket

NEXT_MORNING = datetime(2023, 9, 15, 9, 40, tzinfo=NEW_YORK)  # the session after the data ends


def run_id_on(provider, as_of) -> str:
    return RunRequest(watchlist="adhoc", tickers=["SPY"], as_of=as_of, seed=7, provider=provider.name).run_id


def test_the_run_id_names_the_data_so_a_run_on_other_files_is_another_run(tmp_path, shared_data):
    first = FilesMarket(write_market_dir(tmp_path / "a"))
    same = FilesMarket(write_market_dir(tmp_path / "b"))
    as_of = first.latest_as_of(["SPY"])
    assert as_of == datetime(2023, 9, 14, 16, 31, tzinfo=NEW_YORK)  # the quote table's export time
    assert first.name.startswith("files:") and first.name == same.name
    assert run_id_on(first, as_of) == run_id_on(same, as_of)
    skew = tmp_path / "b" / "SKEW.csv"
    skew.write_text(skew.read_text().replace("\n", "\n", 1)[:-1] + "1\n")  # one value changed in the last row
    changed = FilesMarket(tmp_path / "b")
    assert changed.name != first.name and run_id_on(changed, as_of) != run_id_on(first, as_of)

    # --chain files likewise: a good file after a bad one is another run, not the bad one again.
    good = shared_data / "cboe" / f"spy_quotedata_{CHAIN_DAY}.csv"
    other = tmp_path / "other.csv"
    other.write_text(good.read_text().replace("Bid: 450.81", "Bid: 450.80", 1))
    overlays = [ChainFileOverlay(SimulatedMarket(7), {"SPY": path}) for path in (good, other, good)]
    ids = [run_id_on(o, as_of) for o in overlays]
    assert ids[0] == ids[2] and ids[0] != ids[1]


async def test_a_run_on_files_stages_orders_and_approval_requotes_from_the_same_files(db, tmp_path):
    directory = write_market_dir(tmp_path / "market")
    market = build_market(market_source("files", data_dir=directory), seed=7)
    as_of, why = files_decision_time(market, ["SPY"], now=NEXT_MORNING)
    assert as_of == datetime(2023, 9, 15, 9, 35, tzinfo=NEW_YORK), why  # the first slot after the data ends
    clock = Clock(NEXT_MORNING)
    config = defaults().decision.model_copy(update={"conviction_threshold": 0.2, "min_agreeing_sources": 1})
    outcome = await run_decision(db, market, watchlist="adhoc", tickers=["SPY"], as_of=as_of, seed=7,
                                 config=config, now=clock)
    run = outcome.run
    assert run.provider == market.name and run.market_source == {"market": "files", "data_dir": str(directory)}
    context = outcome.state["context"]
    assert any("Cboe quote table spy_quotedata_2023-09-14.csv" in line for line in context.data_quality["SPY"])
    assert outcome.orders, "the files market staged nothing to approve"
    order = outcome.orders[0]

    ctx = ServiceContext(db=db, clock=clock)
    requoted = ctx.market_for(run.provider, run.seed, run.market_source)
    assert isinstance(requoted, FilesMarket) and requoted.name == run.provider
    review = await approvals.order_review(ctx, order.order_id)
    assert review["broker_preview"]["available"], review["broker_preview"]
    clock.at = NEXT_MORNING.replace(minute=50)
    result = await approvals.decide(ctx, order.order_id, Decision("approve", "alice", acknowledge=True))
    assert result["state"] == "FILLED", result.get("terminal_reason") or result.get("execution")
    # The fill was priced from the files' chain: SPY at the quote table's 450.81, not a simulated price.
    underlying = await db.pool.fetchval("SELECT underlying_price FROM trade_journal WHERE order_id = $1",
                                        order.order_id)
    assert float(underlying) == pytest.approx(450.81, abs=0.01)

    # Files moved away: the approver is told the market cannot be rebuilt, nothing is guessed.
    shutil.rmtree(directory)
    with pytest.raises(approvals.ApprovalError, match="cannot be rebuilt"):
        ctx.market_for(run.provider, run.seed, run.market_source)


@pytest.mark.parametrize("damage, expected", [
    ("no directory", "not a directory"),
    ("corrupt quote table", "spy_quotedata_2023-09-14.csv"),
    ("bars that are not bars", "no daily bars for SPY"),
])
def test_bad_files_give_one_error_line_and_a_nonzero_exit(tmp_path, capsys, damage, expected):
    directory = write_market_dir(tmp_path / "market")
    if damage == "no directory":
        directory = tmp_path / "nowhere"
    elif damage == "corrupt quote table":
        table = directory / f"spy_quotedata_{CHAIN_DAY}.csv"
        table.write_text("\n".join(table.read_text().splitlines()[:2] + ["Expiration Date,Calls,oops"]) + "\n")
    else:
        (directory / "SPY.csv").write_text("ticker,price\nSPY,450\n")
    code, out, err = call(["run", "--market", "files", "--data", str(directory), "--tickers", "SPY",
                           "--as-of", "2023-09-15T09:45"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err


async def test_doctor_checks_the_configured_files_directory(tmp_path):
    from config.connections import load_connections
    from service.doctor import check_market

    directory = write_market_dir(tmp_path / "market")
    good = await check_market(load_connections({"HEDGEGRAPH_MARKET": "files", "HEDGEGRAPH_DATA_DIR": str(directory)}))
    assert good.status == "ok" and "SPY" in good.detail and "2023-09-14 16:31" in good.detail, good
    unset = await check_market(load_connections({"HEDGEGRAPH_MARKET": "files"}))
    assert unset.status == "warning" and "HEDGEGRAPH_DATA_DIR" in unset.detail
    gone = await check_market(load_connections({"HEDGEGRAPH_MARKET": "files",
                                                "HEDGEGRAPH_DATA_DIR": str(tmp_path / "nowhere")}))
    assert gone.status == "error" and "not a directory" in gone.detail


def test_hedgegraph_run_on_files_decides_after_the_data_and_a_changed_file_is_a_new_run(cli_env, tmp_path):
    import json

    directory = write_market_dir(tmp_path / "market")

    def run() -> dict:
        result = cli_env.invoke(app, ["run", "--market", "files", "--data", str(directory), "--json"],
                                catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout[result.stdout.index("{"):])

    first = run()["run"]
    assert first["provider"].startswith("files:") and first["tickers"] == ["SPY"]
    assert first["market_source"] == {"market": "files", "data_dir": str(directory)}
    assert first["as_of"].startswith("2023-09-15T13:35")  # the 09:35 slot after the data ends
    assert run()["run"]["run_id"] == first["run_id"]  # the same files: the same run
    vix = directory / "VIX.csv"
    vix.write_text(vix.read_text().rstrip("\n")[:-1] + "9\n")  # the last VIX close changed
    assert run()["run"]["run_id"] != first["run_id"]


def test_the_configured_market_quotes_the_book(tmp_path, monkeypatch):
    directory = write_market_dir(tmp_path / "market")
    assert isinstance(ServiceContext(db=None).book_market(7), SimulatedMarket)  # the default configuration
    monkeypatch.setenv("HEDGEGRAPH_MARKET", "files")
    monkeypatch.setenv("HEDGEGRAPH_DATA_DIR", str(directory))
    ctx = ServiceContext(db=None)
    assert ctx.market_source == {"market": "files", "data_dir": str(directory)}
    assert isinstance(ctx.book_market(7), FilesMarket)  # marks, settlement, exits and flatten quote the files
