"""`hedgegraph`: run decisions, follow schedules, and inspect runs and orders.

Every list/show command takes `--json` for machines; without it, rich tables for people.
"""
# One module per command group under service/commands/, registered below with one line each.
# A command module imports only typer and service.commands.common at import time; whatever a
# command needs (database, graph, NumPy) it imports inside its function, so `--help` and quick
# commands start fast. Top-level commands live in Typers added without a name.
from __future__ import annotations

import logging
import os
import sys

import typer

from service.commands import backtest, book, db, decide, doctor, llm, orders, risk, runs, service, tokens
from service.commands.common import one_line


class CommandLine(typer.Typer):
    """The root app: bad input of any kind ends in one `error:` line on stderr and a non-zero exit,
    never a traceback (HEDGEGRAPH_DEBUG=1 shows the traceback of an unexpected error)."""

    def __call__(self, args=None, prog_name: str | None = None, **extra):
        from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

        try:
            result = super().__call__(args=args, prog_name=prog_name or "hedgegraph", standalone_mode=False, **extra)
        except NoArgsIsHelpError:  # the help was printed
            sys.exit(2)
        except ClickException as exc:
            hint = ""
            if isinstance(exc, UsageError) and exc.ctx is not None:
                hint = f" (see `{exc.ctx.command_path} --help`)"
            typer.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(130)
        except Exception as exc:
            if os.environ.get("HEDGEGRAPH_DEBUG"):
                raise
            logging.getLogger("hedgegraph").debug("unexpected error", exc_info=True)
            typer.echo(f"error: unexpected {type(exc).__name__}: {one_line(str(exc))} "
                       "(HEDGEGRAPH_DEBUG=1 shows the traceback)", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


app = CommandLine(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
app.add_typer(decide.app)  # run, replay, fork
app.add_typer(service.app)  # journal, schedule, chain, serve
app.add_typer(runs.app, name="runs")
app.add_typer(orders.app, name="orders")
app.add_typer(risk.app, name="risk")
app.add_typer(db.app, name="db")
app.add_typer(tokens.app, name="tokens")
app.add_typer(llm.app, name="llm")
app.add_typer(book.app)  # positions, pnl, account
app.add_typer(doctor.app)  # doctor
app.add_typer(backtest.app, name="backtest")


def main() -> None:  # pragma: no cover - console entry
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":  # pragma: no cover - `python -m service.cli`
    main()
