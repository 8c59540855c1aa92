"""Supervised fine-tuning on demonstrations, with the loss on response tokens only.

Data is JSON Lines, one demonstration per line (or a Parquet file or JSON array of them, read with
Hugging Face `datasets`), in either form:

- ``{"prompt": "This movie is", "response": " a delight."}`` (or TRL's ``"completion"`` for
  ``"response"``): the policy sees the prompt as it will in PPO (tokenized alone, with the
  tokenizer's special tokens) and learns the response, tokenized alone and ended with EOS.
  The texts are joined as they are, so a response that continues a sentence should start with
  its space.
- ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}``:
  rendered with the tokenizer's chat template; the loss is on the assistant turns only (each
  turn's content and end-of-turn tokens, not its role header).

Every demonstration becomes ``input_ids`` and ``labels``, with ``-100`` (ignored by the loss) on
every token the policy is not to learn. TRL's ``SFTTrainer`` then trains on these pre-tokenized
examples: it truncates them to ``max_length``, pads labels with ``-100``, and runs the loop. The
masks are built here rather than by TRL's ``completion_only_loss`` / ``assistant_only_loss`` so that
one rule covers both forms, SmolLM2's chat template included (TRL's assistant masks need a template
with ``{% generation %}`` markers, which SmolLM2's lacks), and so that a prompt is tokenized exactly
as PPO tokenizes it.

With LoRA (``LoraOptions.r > 0``) only the adapters train, and they are merged into the weights
before saving: the output is always a plain Hugging Face folder that ``policy-trainer ppo`` takes
as its policy.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from policy_trainer.config import SFTOptions
from policy_trainer.lora import apply_lora, merge_lora
from policy_trainer.models import load_policy
from reward_service.data_files import read_rows
from reward_service.errors import describe_validation_errors

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips
SUMMARY_FILENAME = "sft_summary.json"


class SFTDataError(ValueError):
    """A demonstrations file that can't be used; the message names the file and line."""


class PromptResponse(BaseModel):
    """A demonstration as a prompt and the response to learn (TRL's prompt-completion form:
    `completion` for `response`)."""

    model_config = ConfigDict(extra="ignore")  # other fields (ids, ratings) may ride along

    prompt: str
    response: str = Field(min_length=1, validation_alias=AliasChoices("response", "completion"))


class Message(BaseModel):
    """One turn of a chat demonstration."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class Conversation(BaseModel):
    """A chat demonstration; its assistant turns are learned."""

    model_config = ConfigDict(extra="ignore")

    messages: list[Message] = Field(min_length=1)


Demonstration = PromptResponse | Conversation


@dataclass(frozen=True)
class SFTResult:
    """What a finished SFT run reports (and records in its summary file)."""

    output_dir: Path
    examples: int
    steps: int
    loss_before: float  # mean response-token loss on the first `loss_examples` demonstrations
    loss_after: float
    trainable_parameters: int
    seconds: float


def read_demonstrations(path: Path | str) -> list[Demonstration]:
    """Every demonstration in a JSONL file (blank lines skipped), or a Parquet file, JSON array
    or Hugging Face Hub dataset of them (read with `datasets`)."""
    path = Path(path)
    rows = list(read_rows(path, SFTDataError))
    demonstrations: list[Demonstration] = []
    for where, content in rows:
        kind = Conversation if isinstance(content, dict) and "messages" in content else None
        kind = kind or PromptResponse
        try:
            demonstrations.append(kind.model_validate(content))
        except ValidationError as error:
            problems = describe_validation_errors(error.errors())
            raise SFTDataError(
                f'{where}: expected {{"prompt", "response" (or "completion")}} or '
                f'{{"messages": [...]}}: {problems}'
            ) from None
    if not demonstrations:
        raise SFTDataError(f"{path}: no demonstrations")
    return demonstrations


def tokenize_demonstration(
    demonstration: Demonstration, tokenizer: PreTrainedTokenizerBase
) -> dict[str, list[int]]:
    """``input_ids`` and ``labels``: labels equal the ids on the tokens to learn, ``-100``
    elsewhere."""
    if isinstance(demonstration, PromptResponse):
        prompt_ids = tokenizer(demonstration.prompt)["input_ids"]
        response_ids = tokenizer(demonstration.response, add_special_tokens=False)["input_ids"]
        response_ids = [*response_ids, tokenizer.eos_token_id]
        return {
            "input_ids": prompt_ids + response_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
        }
    return _tokenize_conversation(demonstration, tokenizer)


def _tokenize_conversation(
    conversation: Conversation, tokenizer: PreTrainedTokenizerBase
) -> dict[str, list[int]]:
    if not tokenizer.chat_template:
        raise SFTDataError(
            "chat demonstrations need a tokenizer with a chat template; this one has none "
            "(use prompt/response demonstrations instead)"
        )
    messages = [message.model_dump() for message in conversation.messages]
    if not any(message["role"] == "assistant" for message in messages):
        raise SFTDataError("a conversation without an assistant turn has nothing to learn")

    def render(upto: int, *, generation_prompt: bool) -> list[int]:
        text = tokenizer.apply_chat_template(
            messages[:upto], tokenize=False, add_generation_prompt=generation_prompt
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    # Render the conversation one message longer each time; the tokens each step adds belong to
    # that message. Assistant turns are split at their header (the generation prompt), which is
    # not learned: at inference the template writes it, the model writes what follows.
    input_ids: list[int] = []
    labels: list[int] = []

    def extend(rendered: list[int], *, learn: bool) -> None:
        if rendered[: len(input_ids)] != input_ids:
            raise SFTDataError(
                "the chat template renders a conversation's start differently once more "
                "messages follow, so turns can't be told apart; use prompt/response data"
            )
        added = rendered[len(input_ids) :]
        input_ids.extend(added)
        labels.extend(added if learn else [IGNORE_INDEX] * len(added))

    for end, message in enumerate(messages, start=1):
        if message["role"] == "assistant":
            extend(render(end - 1, generation_prompt=True), learn=False)
        extend(render(end, generation_prompt=False), learn=message["role"] == "assistant")
    return {"input_ids": input_ids, "labels": labels}


def make_collator(tokenizer: PreTrainedTokenizerBase) -> Any:
    """Pads a list of tokenized demonstrations on the right: ``input_ids`` with the pad token,
    ``labels`` with ``-100``, and an ``attention_mask`` (TRL's collator, as ``SFTTrainer`` uses)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)


def mean_response_loss(
    model: PreTrainedModel,
    tokenized: list[dict[str, list[int]]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int = 8,
) -> float:
    """Mean cross-entropy per learned token (labels != -100) over the examples."""
    import torch

    collate = make_collator(tokenizer)
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(tokenized), batch_size):
            batch = collate(tokenized[start : start + batch_size])
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits
            # Position t predicts token t + 1.
            labels = batch["labels"][:, 1:].to(device)
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2).float(),
                labels,
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total_loss += losses.item()
            total_tokens += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return total_loss / max(total_tokens, 1)


def train_sft(
    model_source: str | Path,
    data_path: Path | str,
    output_dir: Path,
    options: SFTOptions | None = None,
) -> SFTResult:
    """Fine-tune the policy at ``model_source`` on the demonstrations in ``data_path`` and save
    it, adapters merged, as a plain Hugging Face folder in ``output_dir``."""
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    options = options or SFTOptions()
    started = time.monotonic()
    set_seed(options.seed)
    demonstrations = read_demonstrations(data_path)
    model, tokenizer = load_policy(model_source, dtype=torch.float32)
    tokenized = [
        _truncated(tokenize_demonstration(demonstration, tokenizer), options.max_length)
        for demonstration in demonstrations
    ]
    tokenized = [
        example for example in tokenized if any(x != IGNORE_INDEX for x in example["labels"])
    ]
    if not tokenized:
        raise SFTDataError(f"{data_path}: no demonstration has a response within max_length")
    if options.lora.enabled:
        model = apply_lora(model, options.lora)
    trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    loss_sample = tokenized[: options.loss_examples]
    loss_before = mean_response_loss(model, loss_sample, tokenizer, batch_size=options.batch_size)

    with tempfile.TemporaryDirectory(prefix="sft-trainer-") as trainer_dir:
        config = SFTConfig(
            output_dir=trainer_dir,  # the Trainer's own state; nothing is checkpointed
            num_train_epochs=options.epochs,
            per_device_train_batch_size=options.batch_size,
            learning_rate=options.learning_rate,
            warmup_steps=options.warmup_ratio,  # below 1: a fraction of all steps
            weight_decay=options.weight_decay,
            lr_scheduler_type="linear",
            max_length=options.max_length,
            seed=options.seed,
            data_seed=options.seed,
            logging_steps=options.logging_steps,
            save_strategy="no",
            report_to="none",
            # float32 throughout, as the policy is loaded and as PPO trains it (SFTConfig would
            # default to bf16 autocast); and no gradient checkpointing (SFTConfig's default),
            # which trades time for memory a 135M model doesn't need.
            bf16=False,
            gradient_checkpointing=False,
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(tokenized),
            processing_class=tokenizer,
        )
        trainer.train()
        steps = trainer.state.global_step

    model = trainer.model
    loss_after = mean_response_loss(model, loss_sample, tokenizer, batch_size=options.batch_size)
    merged = merge_lora(model)
    merged.eval()
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    result = SFTResult(
        output_dir=output_dir,
        examples=len(tokenized),
        steps=steps,
        loss_before=loss_before,
        loss_after=loss_after,
        trainable_parameters=trainable_parameters,
        seconds=time.monotonic() - started,
    )
    summary = {
        "base": str(model_source),
        "data": str(data_path),
        "options": options.model_dump(),
        **{key: value for key, value in result.__dict__.items() if key != "output_dir"},
    }
    (output_dir / SUMMARY_FILENAME).write_text(json.dumps(summary, indent=2) + "\n")
    return result


def _truncated(example: dict[str, list[int]], max_length: int) -> dict[str, list[int]]:
    return {key: values[:max_length] for key, values in example.items()}
