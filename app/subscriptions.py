"""`flask --app app subscriptions ...`: outbound webhooks to the user's own systems.

The delivery worker (Procfile: deliveries) sends what they subscribe to; see
workers/outbound/deliveries.py for how, and the README for the format and the signature.
"""

from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app
from flask.cli import AppGroup

from app.database import database
from schemas.registry import PROVIDERS
from schemas.statuses import EVENT_STATUSES, PENDING
from workers.outbound import subscriptions
from workers.outbound.deliveries import MAX_AGE
from workers.outbound.post import Refused, check_url, resolve, shown_url

subscriptions_cli = AppGroup("subscriptions", help="Outbound webhooks: who is told of changes.")

# What a change's status may be (a change is never pending).
CHANGE_STATUSES = tuple(status for status in EVENT_STATUSES if status != PENDING)


@subscriptions_cli.command("add")
@click.argument("url")
@click.option(
    "--provider",
    "providers",
    multiple=True,
    type=click.Choice(PROVIDERS),
    help="Only this provider's changes (repeat for several; default: all).",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(CHANGE_STATUSES),
    help="Only changes to this status (repeat for several; default: all).",
)
@click.option(
    "--batch",
    "batch_size",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Up to this many changes per POST, as a JSON array (1: one change, an object).",
)
def add(url: str, providers: tuple[str, ...], statuses: tuple[str, ...], batch_size: int) -> None:
    """Subscribe URL to the changes from now on. Prints the subscription's id, then its
    signing secret (whsec_...), each on a line of its own; the secret is not shown again."""
    try:
        check_url(url)
        resolve(url, current_app.config["SUBSCRIPTIONS_ALLOW_PRIVATE"])
    except Refused as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    with database() as conn:
        subscription_id, secret = subscriptions.create(
            conn, url, list(providers), list(statuses), batch_size
        )
    click.echo(subscription_id)
    click.echo(secret)


@subscriptions_cli.command("list")
def list_subscriptions() -> None:
    """One line per subscription: id, URL, filters, batch, health, backlog, dead letters,
    last success, and while it fails, the last error (why: an answer, or a refusal)."""
    with database() as conn:
        rows = subscriptions.overview(conn)
    for row in rows:
        filters = ",".join((row["providers"] or []) + (row["statuses"] or [])) or "all"
        last = row["last_success_at"].isoformat() if row["last_success_at"] else "never"
        click.echo(
            "\t".join(
                [
                    row["id"],
                    shown_url(row["url"]),
                    filters,
                    f"batch={row['batch_size']}",
                    subscriptions.state(row),
                    f"backlog={row['backlog']}",
                    f"dead={row['dead']}",
                    f"last_success={last}",
                    f"last_error={subscriptions.failing_because(row) or '-'}",
                ]
            )
        )


def exists_or_fail(found: bool, subscription_id: str) -> None:
    if not found:
        raise click.ClickException(f"no subscription {subscription_id}")


@subscriptions_cli.command("remove")
@click.argument("subscription_id")
def remove(subscription_id: str) -> None:
    """Delete a subscription and what it still had to deliver."""
    with database() as conn:
        exists_or_fail(subscriptions.remove(conn, subscription_id), subscription_id)
    click.echo(f"removed {subscription_id}")


@subscriptions_cli.command("rotate-secret")
@click.argument("subscription_id")
@click.option(
    "--grace-hours",
    type=click.FloatRange(0, 168),
    default=24,
    show_default=True,
    help="The old secret also signs (a second signature) this long.",
)
def rotate_secret(subscription_id: str, grace_hours: float) -> None:
    """Give a subscription a new secret; prints it. Until the grace ends, every POST carries
    a signature by each, so the receiver can switch whenever it likes."""
    with database() as conn:
        secret = subscriptions.rotate_secret(conn, subscription_id, timedelta(hours=grace_hours))
    exists_or_fail(secret is not None, subscription_id)
    click.echo(secret)


@subscriptions_cli.command("dead")
@click.argument("subscription_id")
@click.option("--limit", default=100, show_default=True)
def dead(subscription_id: str, limit: int) -> None:
    """Deliveries given up on: id, changes, attempts, last answer, when."""
    with database() as conn:
        rows = subscriptions.dead(conn, subscription_id, limit)
    for row in rows:
        click.echo(
            f"{row['id']}\tchanges={row['change_count']}\tattempts={row['attempts']}\t"
            f"{row['last_error'] or '-'}\t{row['dead_at'].isoformat()}"
        )


@subscriptions_cli.command("replay")
@click.argument("subscription_id")
@click.argument("delivery_ids", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Every dead delivery.")
def replay(subscription_id: str, delivery_ids: tuple[int, ...], everything: bool) -> None:
    """Send dead deliveries again, with their webhook-ids (retried for another day)."""
    if not delivery_ids and not everything:
        raise click.UsageError("give DELIVERY_IDS or --all")
    with database() as conn:
        count = subscriptions.replay(conn, subscription_id, list(delivery_ids) or None, MAX_AGE)
    click.echo(f"replaying {count}")
