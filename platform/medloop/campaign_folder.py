"""Commands that only read, or work on a campaign that must already exist, never create one.

``medloop ingest`` and ``medloop demo`` create a campaign (its folder and ledger). Every other command
opens the ledger with :meth:`medloop.ledger.store.Ledger.open_existing`: a mistyped ``--config``,
``root`` or ``MEDLOOP_CONFIG`` stops with one line naming the folder and how to create the campaign,
instead of leaving an empty ledger behind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from medloop.config import Campaign
    from medloop.ledger.store import Ledger

CREATE_HINT = "create it with `medloop ingest synthetic|busi|generic [PATH] --config <campaign file>`"


class CampaignMissing(RuntimeError):
    """The campaign has no ledger yet; the message is one line naming where it was looked for."""


def missing_message(campaign: Campaign) -> str:
    """One line: which campaign, where it was looked for, how to create it."""
    from medloop.ledger.store import display_url

    if campaign.ledger_url is None:
        where = f"in {campaign.folder.resolve()} (no ledger.db there)"
    else:
        where = f"in the ledger {display_url(campaign.ledger_url)} (no medloop tables there)"
    return f"no campaign {campaign.name!r} {where}; check --config / MEDLOOP_CONFIG and root, or {CREATE_HINT}"


def open_existing_ledger(campaign: Campaign) -> Ledger:
    """The campaign's ledger, opened only when it exists; raises :class:`CampaignMissing` otherwise."""
    from medloop.ledger.store import Ledger, LedgerMissing

    try:
        return Ledger.open_existing(campaign.ledger)
    except LedgerMissing:
        raise CampaignMissing(missing_message(campaign)) from None


def _exit(command: str, err: CampaignMissing) -> NoReturn:
    import typer

    typer.echo(f"medloop {command}: {err}", err=True)
    raise typer.Exit(1)


def ledger_or_exit(campaign: Campaign, command: str) -> Ledger:
    """For a command line: the existing ledger, or the one-line message on stderr and exit code 1."""
    try:
        return open_existing_ledger(campaign)
    except CampaignMissing as err:
        _exit(command, err)


def require_campaign(campaign: Campaign) -> None:
    """Raise :class:`CampaignMissing` unless the campaign's ledger exists (opens nothing for writing)."""
    from medloop.ledger.store import Ledger, LedgerMissing

    try:
        Ledger.check_exists(campaign.ledger)
    except LedgerMissing:
        raise CampaignMissing(missing_message(campaign)) from None


def require_campaign_or_exit(campaign: Campaign, command: str) -> None:
    """For a command line that opens the ledger later or elsewhere (``dashboard``, ``round``): the
    one-line message and exit code 1 unless the campaign exists."""
    try:
        require_campaign(campaign)
    except CampaignMissing as err:
        _exit(command, err)
