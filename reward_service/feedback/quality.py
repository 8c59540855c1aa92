"""A campaign's quality report, what the admin page shows and its JSON twin returns: progress,
agreement between raters (per criterion, per item, each rater with the consensus and with gold),
position bias, and how often the reward model agrees with the people.

:func:`campaign_report` reads the store and, given a reward service's URL, first scores (and
stores the scores of) the items that have none; every other function here is pure.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from dataclasses import asdict
from typing import Any

from reward_service.client import RewardClient, RewardClientError
from reward_service.feedback import agreement
from reward_service.feedback.store import CampaignInfo, ItemInfo, JudgementInfo, Store

logger = logging.getLogger(__name__)


def campaign_report(
    store: Store, name: str, *, reward_url: str | None = None, reward_api_key: str | None = None
) -> dict:
    """The campaign, its progress, its quality figures and (with ``reward_url``) what scoring
    the unscored items did. Figures with nothing to compute them from are NaN."""
    campaign = store.campaign(name)
    reward_model = score_missing(store, name, reward_url, reward_api_key) if reward_url else None
    return {
        "campaign": campaign_json(campaign),
        "progress": asdict(store.progress(name)),
        "quality": quality_figures(campaign, store.judgements(name)),
        "reward_model": reward_model,
    }


# --- the reward model's scores ----------------------------------------------------------------


def score_missing(store: Store, name: str, reward_url: str, api_key: str | None) -> dict:
    """Scores, with the reward service at ``reward_url``, the items that have no model scores
    yet, and stores the scores (they also order the next items: least sure first). A service
    that cannot be reached is reported, not raised: the rest of the report still shows."""
    missing = [item for item in store.items(name) if item.model_scores is None]
    report: dict[str, Any] = {"url": reward_url, "scored": 0, "error": None}
    if not missing:
        return report
    prompts, completions = _flattened(missing)
    try:
        with RewardClient(reward_url, api_key=api_key, max_retries=2) as client:
            rewards = client.score(prompts=prompts, completions=completions)
    except RewardClientError as error:
        logger.warning("could not score with the reward service: %s", error)
        report["error"] = f"could not score with {reward_url}: {error}"
        return report
    scores = _scores_by_item(missing, rewards)
    store.set_model_scores(name, scores)
    report["scored"] = len(scores)
    return report


def _flattened(items: list[ItemInfo]) -> tuple[list[str], list[str]]:
    """One (prompt, completion) per completion of the items, in order: one scoring request."""
    prompts = [item.prompt for item in items for _ in item.completions]
    completions = [completion for item in items for completion in item.completions]
    return prompts, completions


def _scores_by_item(items: list[ItemInfo], rewards: list[float]) -> dict[int, list[float]]:
    """The flat rewards of :func:`_flattened` cut back into each item's scores, by item id."""
    scores: dict[int, list[float]] = {}
    offset = 0
    for item in items:
        scores[item.id] = rewards[offset : offset + len(item.completions)]
        offset += len(item.completions)
    return scores


# --- the figures ----------------------------------------------------------------------------


def quality_figures(campaign: CampaignInfo, judgements: list[JudgementInfo]) -> dict:
    """Every figure of the quality page, from a campaign's judgements (skips left out of the
    agreement, counted in the raters' times)."""
    ranked = [judgement for judgement in judgements if not judgement.skipped]
    by_item = _by_item(ranked)
    figures = agreement.campaign_agreement(_item_judgements(by_item), campaign.criteria)
    return {
        "criteria": _criteria_figures(figures),
        "raters": _rater_figures(figures, judgements),
        "items": _item_figures(campaign, by_item),
        "position_bias": _position_bias(campaign, ranked),
    }


def _by_item(ranked: list[JudgementInfo]) -> dict[int, list[JudgementInfo]]:
    by_item: dict[int, list[JudgementInfo]] = defaultdict(list)
    for judgement in ranked:
        by_item[judgement.item_id].append(judgement)
    return by_item


def _item_judgements(
    by_item: dict[int, list[JudgementInfo]],
) -> dict[int, agreement.ItemJudgements]:
    """What the agreement figures take of each item: each rater's ranks, the gold and scores."""
    return {
        item_id: agreement.ItemJudgements(
            rankings={judgement.rater: judgement.ranks for judgement in item_judgements},
            gold=item_judgements[0].gold,
            model_scores=item_judgements[0].model_scores,
        )
        for item_id, item_judgements in by_item.items()
    }


def _criteria_figures(figures: agreement.CampaignAgreement) -> dict[str, dict]:
    return {
        criterion: {**asdict(criterion_figures), "model_accuracy": criterion_figures.model_accuracy}
        for criterion, criterion_figures in figures.criteria.items()
    }


def _rater_figures(
    figures: agreement.CampaignAgreement, judgements: list[JudgementInfo]
) -> dict[str, dict]:
    """Each rater's agreement with the consensus and with gold, and their median time (skips
    included), by name."""
    raters = {
        rater: {
            **asdict(rater_figures),
            "with_consensus": rater_figures.with_consensus,
            "with_gold": rater_figures.with_gold,
        }
        for rater, rater_figures in figures.raters.items()
    }
    times: dict[str, list[int]] = defaultdict(list)
    for judgement in judgements:
        times[judgement.rater].append(judgement.time_spent_ms)
    for rater, rater_times in times.items():
        raters.setdefault(rater, {})["median_time_s"] = statistics.median(rater_times) / 1000
    return dict(sorted(raters.items()))


def _item_figures(campaign: CampaignInfo, by_item: dict[int, list[JudgementInfo]]) -> list[dict]:
    """Kendall's W of each item ranked by two raters or more, per criterion."""
    rows = []
    for item_id, item_judgements in sorted(by_item.items(), key=lambda e: e[1][0].item_position):
        if len(item_judgements) < 2:
            continue
        rows.append(
            {
                "item_id": item_id,
                "position": item_judgements[0].item_position,
                "prompt": item_judgements[0].prompt,
                "raters": len(item_judgements),
                "kendalls_w": {
                    criterion: agreement.kendalls_w([j.ranks[criterion] for j in item_judgements])
                    for criterion in campaign.criteria
                },
            }
        )
    return rows


def _position_bias(campaign: CampaignInfo, ranked: list[JudgementInfo]) -> dict[str, list]:
    """The mean rank given to the completion shown at each place, per criterion: with shuffled
    orders, any slope is the raters' position bias."""
    bias = {}
    for criterion in campaign.criteria:
        places: list[list[int]] = [[] for _ in range(campaign.k)]
        for judgement in ranked:
            for place, index in enumerate(judgement.order):
                places[place].append(judgement.ranks[criterion][index])
        bias[criterion] = [statistics.fmean(ranks) if ranks else math.nan for ranks in places]
    return bias


# --- as JSON --------------------------------------------------------------------------------


def campaign_json(campaign: CampaignInfo) -> dict:
    return {
        "name": campaign.name,
        "criteria": campaign.criteria,
        "k": campaign.k,
        "overlap": campaign.overlap,
        "guidelines": campaign.guidelines,
        "created_at": campaign.created_at.isoformat(),
    }


def json_safe(value: Any) -> Any:
    """NaN (a figure with no pairs to compute it from) as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(entry) for key, entry in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(entry) for entry in value]
    return value
