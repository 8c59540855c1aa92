"""Training end to end on a tiny seeded model: it learns, and its folder serves as it is."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from reward_service.cli import build_parser
from reward_service.training.cli import run as run_training_command
from reward_service.training.config import TrainConfig
from reward_service.training.data import Ranking, Scored, write_records
from reward_service.training.evaluate import evaluate_file, held_out_set, pairwise_accuracy
from reward_service.training.train import train

GOOD = ["great", "wonderful", "excellent", "superb", "delightful", "brilliant"]
BAD = ["awful", "terrible", "boring", "dreadful", "dull", "horrible"]
FILLER = ["the", "film", "story", "was", "a", "plot", "actors", "movie"]


def snippet(rng: random.Random, score: int) -> str:
    """A text whose score is (good words - bad words): separable by the words alone."""
    words = [rng.choice(GOOD) for _ in range(max(score, 0))]
    words += [rng.choice(BAD) for _ in range(max(-score, 0))]
    words += rng.sample(FILLER, 3)
    rng.shuffle(words)
    return " ".join(words)


def scored_items(count: int, seed: int) -> list[Scored]:
    rng = random.Random(seed)
    return [
        Scored("", snippet(rng, score), float(score))
        for score in (rng.randint(-2, 2) for _ in range(count))
    ]


def rankings(count: int, seed: int) -> list[Ranking]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        scores = rng.sample([-2, -1, 1, 2], 3)
        ranks = [sorted(scores, reverse=True).index(score) + 1 for score in scores]
        out.append(Ranking("", tuple(snippet(rng, s) for s in scores), tuple(ranks)))
    return out


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A 2-layer BERT encoder (hidden 32, seeded) with the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from reward_service.training.base_encoder import minilm_folder

    out = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    files = {
        "train.rankings": rankings(160, seed=1),
        "validation.rankings": rankings(30, seed=2),
        "train.scores": scored_items(400, seed=3),
        "test.scores": scored_items(120, seed=4),
    }
    for name, records in files.items():
        write_records(folder / f"{name}.jsonl", records)
    return {name: folder / f"{name}.jsonl" for name in files}


def tiny_config(objective: str, base: Path, **overrides) -> TrainConfig:
    settings = dict(
        objective=objective,
        base=base,
        epochs=4,
        learning_rate=2e-3,
        batch_size=16,
        max_length=32,
        warmup_ratio=0.0,
        patience=2,
        seed=0,
    )
    return TrainConfig(**{**settings, **overrides})


@pytest.mark.parametrize("objective", ["pairwise", "binary"])
def test_a_tiny_model_learns_rankings_above_chance_and_its_folder_serves(
    objective, tiny_base, data, tmp_path
):
    from reward_service.model.loading import load_model
    from reward_service.model.spec import ModelSpec

    out = tmp_path / objective
    result = train(
        data["train.rankings"],
        out,
        tiny_config(objective, tiny_base),
        eval_file=data["validation.rankings"],
    )

    assert result.best.pairwise_accuracy > 0.75  # chance is 0.5
    assert result.epochs[0].epoch == 1 and result.best_epoch in [e.epoch for e in result.epochs]
    rows, held_out = evaluate_file({"tiny": out}, data["test.scores"])
    assert rows[0].figures.pairwise_accuracy > 0.75 and rows[0].figures.pearson > 0.5

    served = load_model(ModelSpec(name="tiny", source=str(out)))
    assert served.mapping.normalization is not None
    assert objective in served.mapping.description
    encoded = served.encoder.pad(served.encoder.encode(["a great wonderful film", "awful dull"]))
    good, bad = served.resolved.map_logits(served.backend.forward(encoded))
    assert good > bad
    assert (out / "README.md").read_text().startswith(f"# Reward model: {objective}")


def test_served_rewards_have_mean_0_and_std_1_on_the_held_out_inputs(tiny_base, data, tmp_path):
    from reward_service.training.data import read_records
    from reward_service.training.evaluate import score_folder

    out = tmp_path / "model"
    train(
        data["train.rankings"],
        out,
        tiny_config("pairwise", tiny_base, epochs=1),
        eval_file=data["validation.rankings"],
    )
    held_out = held_out_set(read_records(data["validation.rankings"]).records)
    rewards = score_folder(out, held_out.inputs)
    assert abs(rewards.mean()) < 1e-4 and abs(rewards.std() - 1) < 1e-4


def test_regression_on_scores_holds_out_a_fraction_when_no_eval_file_is_given(
    tiny_base, data, tmp_path
):
    out = tmp_path / "model"
    result = train(data["train.scores"], out, tiny_config("regression", tiny_base, dropout=0.0))
    assert result.held_out_items == 40  # 10% of 400 records
    assert result.best.pearson > 0.5
    # The default recipe's dropout=0.0 lands in the stock config.json (no effect when serving).
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_dropout_prob"] == config["attention_probs_dropout_prob"] == 0.0


def test_training_is_repeatable_with_a_seed(tiny_base, data, tmp_path):
    config = tiny_config("pairwise", tiny_base, epochs=1)
    first = train(
        data["train.rankings"], tmp_path / "a", config, eval_file=data["validation.rankings"]
    )
    second = train(
        data["train.rankings"], tmp_path / "b", config, eval_file=data["validation.rankings"]
    )
    assert first.epochs == second.epochs


def test_an_objective_the_data_cannot_feed_is_refused(tiny_base, data, tmp_path):
    with pytest.raises(ValueError, match="pairwise objective needs rankings or pairs"):
        train(data["train.scores"], tmp_path / "m", tiny_config("pairwise", tiny_base))


def test_pairwise_accuracy_counts_ties_half():
    rewards = np.array([3.0, 1.0, 1.0])
    assert pairwise_accuracy(rewards, np.array([0, 1]), np.array([1, 2])) == 0.75


def test_the_evaluate_command_prints_the_table_with_the_lexicon_and_human_rows(
    tiny_base, data, tmp_path, capsys
):
    rated = tmp_path / "rated.jsonl"
    lines = [
        {"text": "a great film", "score": 2.0, "ratings": [2, 2, 1]},
        {"text": "an awful film", "score": -2.0, "ratings": [-2, -1, -2]},
        {"text": "the film", "score": 0.0, "ratings": [0, 1, 0]},
    ]
    rated.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "model"
    train(
        data["train.rankings"],
        out,
        tiny_config("pairwise", tiny_base, epochs=1),
        eval_file=data["validation.rankings"],
    )
    args = build_parser().parse_args(["evaluate", "--model", f"tiny={out}", "--data", str(rated)])
    assert run_training_command(args) == 0
    table = capsys.readouterr().out
    assert "| tiny " in table and "VADER lexicon" in table and "one human vs mean" in table
    assert "3 items, 3 pairs whose human scores differ by >= 1" in table

    # --data repeated: one table per file, each under its file's name.
    two = tmp_path / "two.jsonl"
    two.write_text("".join(json.dumps(line) + "\n" for line in lines[:2]))
    args = build_parser().parse_args(
        ["evaluate", "--model", f"tiny={out}", "--data", str(rated), "--data", str(two)]
    )
    assert run_training_command(args) == 0
    tables = capsys.readouterr().out.split("## ")[1:]
    assert [table.splitlines()[0] for table in tables] == [str(rated), str(two)]
    assert "3 items, 3 pairs" in tables[0] and "2 items, 1 pairs" in tables[1]


def test_vader_model_builds_the_default_recipe_on_another_base_with_out_of_domain_figures(
    tiny_base, tmp_path, capsys
):
    """`reward-service vader-model OUT --base FOLDER`: the default recipe on the VADER movie
    snippets, evaluated on their test split and on the Amazon and NYT snippets, which it never
    trains on."""
    out = tmp_path / "vader-tiny"
    args = build_parser().parse_args(
        ["vader-model", str(out), "--base", str(tiny_base), "--epochs", "1", "--max-length", "32"]
    )
    assert run_training_command(args) == 0
    printed = capsys.readouterr().out
    card = (out / "README.md").read_text()
    for section in ("Amazon review snippets", "New York Times editorial snippets"):
        assert f"Out of domain: the VADER study's {section}" in printed
        assert f"Out of domain: the VADER study's {section}" in card
    assert "1,005 items" in printed  # the movie test split
    assert "3,708 items" in printed and "5,190 items" in printed
    assert printed.count("one human vs mean of the rest") == 3
    config = json.loads((out / "reward_config.json").read_text())
    assert "test: pairwise accuracy" in config["description"]
    assert "tiny-base" in config["description"]


def test_trls_conversational_pairs_in_parquet_train_exactly_as_the_same_pairs_in_json_lines(
    tiny_base, data, tmp_path
):
    """TRL's preference data (https://huggingface.co/docs/trl/dataset_formats), implicit prompt,
    in a Parquet file, trains the same model as our own pairs file of the same texts."""
    import pandas

    from reward_service.training.data import Pair, read_records
    from reward_service.training.rules import pairs_from

    pairs = [
        Pair(f"Review film {number}.", pair.chosen, pair.rejected)
        for number, pair in enumerate(pairs_from(read_records(data["train.rankings"]).records))
    ]
    ours = tmp_path / "pairs.jsonl"
    write_records(ours, pairs)
    trls = tmp_path / "pairs.parquet"
    pandas.DataFrame(
        {
            "chosen": [
                [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.chosen}]
                for p in pairs
            ],
            "rejected": [
                [
                    {"role": "user", "content": p.prompt},
                    {"role": "assistant", "content": p.rejected},
                ]
                for p in pairs
            ],
        }
    ).to_parquet(trls)

    config = tiny_config("pairwise", tiny_base, epochs=1)
    from_ours = train(ours, tmp_path / "a", config, eval_file=data["validation.rankings"])
    from_trls = train(trls, tmp_path / "b", config, eval_file=data["validation.rankings"])
    assert read_records(trls).records == pairs
    assert from_trls.epochs == from_ours.epochs


def test_vader_model_distils_a_teacher_or_a_file_of_its_rewards(tiny_base, data, tmp_path, capsys):
    """`vader-model OUT --teacher DIR --unlabelled N`: the teacher scores N unlabelled texts and
    the rated snippets, the student trains on them, and says so; with --save-teacher-rewards the
    rewards go to a file that a second build distils from without the teacher."""
    teacher = tmp_path / "teacher"
    train(data["train.scores"], teacher, tiny_config("regression", tiny_base, epochs=1))
    rewards = tmp_path / "teacher-rewards.jsonl.gz"
    common = ["--base", str(tiny_base), "--epochs", "1", "--max-length", "32"]
    common += ["--unlabelled", "300", "--teacher-weight", "0.5"]
    for out, source in (
        ("from-teacher", ["--teacher", str(teacher), "--save-teacher-rewards", str(rewards)]),
        ("from-file", ["--teacher-rewards", str(rewards)]),
    ):
        args = build_parser().parse_args(["vader-model", str(tmp_path / out), *common, *source])
        assert run_training_command(args) == 0
        assert "for the teacher's scores" in capsys.readouterr().out
        card = (tmp_path / out / "README.md").read_text()
        assert "(teacher weight 0.5) with 300 unlabelled texts" in card
        # 8,538 train + 1,062 validation snippets and the 300 unlabelled texts.
        assert "9,900 records" in card
    assert "distilled from teacher " in (tmp_path / "from-teacher" / "README.md").read_text()
    assert str(rewards) in (tmp_path / "from-file" / "README.md").read_text()


def test_bf16_autocast_trains_float32_weights_that_learn_and_no_trains_in_float32(
    tiny_base, data, tmp_path
):
    """--mixed-precision bf16 runs the forward passes in bf16 autocast (the weights come out
    different from float32 training's) while the saved weights stay float32; both learn."""
    import torch
    from safetensors.torch import load_file

    weights = {}
    for precision in ("bf16", "no"):
        out = tmp_path / precision
        result = train(
            data["train.scores"],
            out,
            tiny_config("regression", tiny_base, epochs=2, mixed_precision=precision),
            eval_file=data["test.scores"],
        )
        assert result.best.pearson > 0.5
        weights[precision] = load_file(out / "model.safetensors")
    assert {tensor.dtype for tensor in weights["bf16"].values()} == {torch.float32}
    name = "classifier.weight"
    assert not np.allclose(weights["bf16"][name].numpy(), weights["no"][name].numpy())
