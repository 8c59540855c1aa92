"""`reward-service feedback`: serve the ranking app, invite raters, create campaigns (from sampled
completions, or imported from Label Studio), export the rankings for training, upgrade the
database. Flags come from ``FeedbackSettings`` and the option models below; REWARD_FEEDBACK_*
variables fill in the settings' flags not given."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import make_url

from reward_service.feedback import label_studio
from reward_service.feedback.db import upgrade
from reward_service.feedback.export import Aggregate, ExportFormat, export
from reward_service.feedback.samples import read_samples
from reward_service.feedback.settings import FeedbackSettings
from reward_service.feedback.store import DEFAULT_CRITERIA, NewItem, Store, checked_item
from reward_service.flags import (
    Flag,
    add_settings_arguments,
    settings_from_args,
    settings_overrides,
)

COMMAND = "feedback"
IMPORTED_CRITERION = "overall"  # a Label Studio judgement is one ranking


class RaterOptions(BaseModel):
    """`feedback invite`"""

    model_config = ConfigDict(extra="forbid", title="invite")

    name: Annotated[str, Flag(positional=True)] = Field(
        description="The rater's display name (all that is stored about them)."
    )


class NewCampaignOptions(BaseModel):
    """What every new campaign is given, however its items come."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(
        None, ge=2, le=9, description="Completions per prompt (default: the first item's); all "
        "items must have exactly K.",
    )  # fmt: skip
    overlap: int = Field(1, ge=1, description="How many raters rank each item.")
    guidelines: Path | None = Field(
        None, description="A text file of guidelines, shown beside every task."
    )


class CampaignOptions(NewCampaignOptions):
    """`feedback campaign create`"""

    model_config = ConfigDict(title="campaign")

    name: Annotated[str, Flag(positional=True)] = Field(description="The campaign's name.")
    items: Path = Field(
        description="The prompts and their K completions: `policy-trainer sample`'s JSONL (a line "
        'may add "gold": {criterion: ranks}, a gold item), or PPO\'s samples.jsonl. A Label '
        "Studio export: `feedback import`.",
    )
    criteria: str = Field(
        ",".join(DEFAULT_CRITERIA),
        description="What raters rank by, comma-separated, one ranking each; 'overall' for one "
        "ranking.",
    )


_LABEL_STUDIO_DEFAULTS = label_studio.LabelStudioOptions()


class ImportOptions(NewCampaignOptions):
    """`feedback import`: label_studio.LabelStudioOptions as flags."""

    model_config = ConfigDict(title="import")

    campaign: str = Field(description="The new campaign's name (ranked by one criterion, overall).")
    label_studio: Path = Field(
        description="A Label Studio JSON export (not JSON-MIN) of a ranking project, a List with a "
        "Ranker or a Pairwise: its tasks become the items, its annotations judgements."
    )
    prompt_field: str = Field(
        _LABEL_STUDIO_DEFAULTS.prompt_field, description="The task data field of the prompt."
    )
    items_field: str | None = Field(
        _LABEL_STUDIO_DEFAULTS.items_field,
        description="The task data field the List shows (default: the one data field holding a "
        "list of {id, body} objects).",
    )
    from_name: str | None = Field(
        _LABEL_STUDIO_DEFAULTS.from_name,
        description="The name of the Ranker or Pairwise tag to read where an annotation holds "
        "several.",
    )
    bucket_order: str | None = Field(
        None,
        description="A Ranker with several buckets: their names, best first, comma-separated "
        "(e.g. best,good,bad).",
    )
    ties_within_buckets: bool = Field(
        _LABEL_STUDIO_DEFAULTS.ties_within_buckets,
        description="Each bucket is one tie (buckets used as grades), not ranked in the "
        "annotator's order.",
    )
    pairwise_fields: Annotated[tuple[str, str], Flag(metavar=("LEFT", "RIGHT"))] = Field(
        _LABEL_STUDIO_DEFAULTS.pairwise_fields,
        description="The two task data fields a Pairwise tag compares, left then right.",
    )

    def label_studio_options(self) -> label_studio.LabelStudioOptions:
        return label_studio.LabelStudioOptions(
            prompt_field=self.prompt_field,
            items_field=self.items_field,
            from_name=self.from_name,
            bucket_order=None if self.bucket_order is None else _names(self.bucket_order),
            ties_within_buckets=self.ties_within_buckets,
            pairwise_fields=self.pairwise_fields,
        )


class ExportOptions(BaseModel):
    """`feedback export`"""

    model_config = ConfigDict(extra="forbid", title="export")

    campaign: str = Field(description="The campaign to export.")
    format: ExportFormat = Field(
        "rankings",
        description="rankings: the JSONL `reward-service train` reads, one line per judgement "
        "and criterion; pairs: chosen/rejected/margin JSONL (TRL's RewardTrainer); hf: a "
        "`datasets` folder of the pairs.",
    )
    out: Path = Field(description="The file (a folder for hf) to write.")
    aggregate: Aggregate | None = Field(
        None, description="rankings only: one line per item and criterion instead, by mean rank "
        "or Borda count.",
    )  # fmt: skip


def add_commands(commands: argparse._SubParsersAction) -> None:
    feedback = commands.add_parser(
        COMMAND, help="The ranking web app: people rank completions, the rankings train models."
    )
    subcommands = feedback.add_subparsers(dest="feedback_command", required=True)

    serve = subcommands.add_parser("serve", help="Serve the ranking pages and the admin pages.")
    add_settings_arguments(serve, FeedbackSettings, "feedback serve")

    invite = subcommands.add_parser("invite", help="Add a rater; print their invitation link.")
    add_settings_arguments(invite, RaterOptions)
    add_settings_arguments(invite, FeedbackSettings, "database", fields=("db", "base_url"))

    campaign = subcommands.add_parser("campaign", help="Create campaigns.")
    campaign_commands = campaign.add_subparsers(dest="campaign_command", required=True)
    create = campaign_commands.add_parser(
        "create", help="A campaign of sampled completions (a Label Studio export: `import`)."
    )
    add_settings_arguments(create, CampaignOptions)
    add_settings_arguments(create, FeedbackSettings, "database", fields=("db",))

    import_command = subcommands.add_parser(
        "import",
        help="A campaign from a Label Studio ranking project's export, with its judgements; "
        "all of it or, on any error, nothing.",
    )
    add_settings_arguments(import_command, ImportOptions)
    add_settings_arguments(import_command, FeedbackSettings, "database", fields=("db",))

    export_command = subcommands.add_parser(
        "export", help="A campaign's judgements as training data."
    )
    add_settings_arguments(export_command, ExportOptions)
    add_settings_arguments(export_command, FeedbackSettings, "database", fields=("db",))

    upgrade_command = subcommands.add_parser(
        "upgrade", help="Create the database, or migrate it to the newest schema."
    )
    add_settings_arguments(upgrade_command, FeedbackSettings, "database", fields=("db",))


def run(args: argparse.Namespace) -> int:
    command = args.feedback_command
    # Every command opens the database, which runs the migrations: their INFO lines are noise.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if command == "serve":
        return _serve(_settings(args))
    if command == "invite":
        return _invite(args)
    if command == "campaign":
        return _create_campaign(args)
    if command == "import":
        return _import(args)
    if command == "export":
        return _export(args)
    upgrade(_settings(args).db)
    print(f"the database {_shown(_settings(args).db)} has the newest schema")
    return 0


def _settings(args: argparse.Namespace) -> FeedbackSettings:
    return FeedbackSettings(**settings_overrides(args, FeedbackSettings))


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _serve(settings: FeedbackSettings) -> int:
    import uvicorn

    from reward_service.feedback.app import create_app

    app = create_app(settings)
    print(
        f"ranking pages at {settings.public_url()}/campaigns, admin pages at "
        f"{settings.public_url()}/admin, database {_shown(settings.db)}",
        flush=True,
    )
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False
    )
    return 0


def _invite(args: argparse.Namespace) -> int:
    settings = _settings(args)
    options = settings_from_args(args, RaterOptions)
    store = Store(settings.db)
    try:
        token = store.add_rater(options.name)
    finally:
        store.close()
    print(settings.invitation_url(token))
    return 0


def _create_campaign(args: argparse.Namespace) -> int:
    options = settings_from_args(args, CampaignOptions)
    items = [
        (
            sample.where,
            NewItem(
                prompt=sample.prompt,
                completions=list(sample.completions),
                source=sample.source,
                model_scores=sample.model_scores,
                gold=sample.gold,
            ),
        )
        for sample in read_samples(options.items, k=options.k)
    ]
    _store_campaign(args, options.name, options, _names(options.criteria), items)
    return 0


def _import(args: argparse.Namespace) -> int:
    options = settings_from_args(args, ImportOptions)
    imported = label_studio.read_export(options.label_studio, options.label_studio_options())
    items = [
        (
            f"{options.label_studio}: Label Studio task "
            f"{item.source['label_studio_task_id'] or f'#{position}'}",
            NewItem(item.prompt, item.completions, item.source),
        )
        for position, item in enumerate(imported.items)
    ]
    _store_campaign(
        args, options.campaign, options, [IMPORTED_CRITERION], items, imported.judgements
    )
    return 0


def _store_campaign(
    args: argparse.Namespace,
    name: str,
    options: NewCampaignOptions,
    criteria: list[str],
    items: list[tuple[str, NewItem]],
    judgements: list[label_studio.ImportedJudgement] | None = None,
) -> None:
    """Creates the campaign with its items (named by where they were read, for errors) and any
    imported judgements, in one transaction: on any error nothing is stored."""
    if not items:
        raise ValueError("no items to rank in the file")
    k = options.k or len(items[0][1].completions)
    # Checked here too, before the store checks them again, to name the file's line or task.
    checked = [checked_item(item, k=k, criteria=criteria, where=where) for where, item in items]
    guidelines = options.guidelines.read_text(encoding="utf-8") if options.guidelines else ""
    store = Store(_settings(args).db)
    try:
        store.import_campaign(
            name,
            k=k,
            criteria=criteria,
            guidelines=guidelines,
            overlap=options.overlap,
            items=checked,
            judgements=judgements or [],
        )
    finally:
        store.close()
    gold = sum(item.gold is not None for item in checked)
    print(
        f"campaign {name!r}: {len(checked)} items of {k} completions"
        + (f" ({gold} gold)" if gold else "")
        + f", ranked by {', '.join(criteria)}, {options.overlap} rater(s) each"
        + ("" if judgements is None else f"; {len(judgements)} judgements imported")
    )


def _names(comma_separated: str) -> list[str]:
    return [name.strip() for name in comma_separated.split(",") if name.strip()]


def _export(args: argparse.Namespace) -> int:
    settings = _settings(args)
    options = settings_from_args(args, ExportOptions)
    store = Store(settings.db)
    try:
        rows = export(store, options.campaign, options.format, options.out, options.aggregate)
    finally:
        store.close()
    print(f"wrote {rows} {options.format} rows of campaign {options.campaign!r} to {options.out}")
    return 0
