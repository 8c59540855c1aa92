"""Every option of every command that reads environment variables has a working one:
REWARD_SERVICE_<OPTION> for `reward-service serve` (and the model options `score` shares with it),
grouped options included (REWARD_SERVICE_MAX_BATCH_SIZE, REWARD_SERVICE_SCALE...), and
REWARD_FEEDBACK_<OPTION> for `reward-service feedback`. The options are read from the argparse
parsers themselves, so an option added later without a variable fails here. A flag beats its
variable; a grouped option's variable beats the group's JSON; a variable that names no option, or
whose value its option refuses, is an error naming it."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from helpers import HTTP_TIMEOUT_S, REPO_ROOT, WAIT_S
from pydantic import BaseModel
from pydantic_settings import SettingsError

from policy_trainer.cli import build_parser as build_trainer_parser
from reward_service.cli import build_parser, serve_settings
from reward_service.feedback.cli import CampaignOptions, ExportOptions, ImportOptions, RaterOptions
from reward_service.feedback.settings import FeedbackSettings
from reward_service.flags import settings_overrides
from reward_service.serving.settings import ServeSettings
from reward_service.variables import Variable, variables


def feedback_settings(args: argparse.Namespace) -> FeedbackSettings:
    """As `reward-service feedback` builds them: the flags given, then REWARD_FEEDBACK_*."""
    return FeedbackSettings(**settings_overrides(args, FeedbackSettings))


def fields(*models: type[BaseModel]) -> frozenset[str]:
    return frozenset(name for model in models for name in model.model_fields)


# command -> (its settings, how the command builds them, its options that are per-call inputs
# rather than settings: those have no variable).
COMMANDS: dict[tuple[str, ...], tuple[type, Callable[[argparse.Namespace], Any], frozenset]] = {
    ("serve",): (ServeSettings, serve_settings, frozenset()),
    ("score",): (
        ServeSettings,
        serve_settings,
        frozenset({"texts", "urls", "prompts", "completions", "raw"}),
    ),
    ("feedback", "serve"): (FeedbackSettings, feedback_settings, frozenset()),
    ("feedback", "invite"): (FeedbackSettings, feedback_settings, fields(RaterOptions)),
    ("feedback", "campaign", "create"): (
        FeedbackSettings,
        feedback_settings,
        fields(CampaignOptions),
    ),
    ("feedback", "import"): (FeedbackSettings, feedback_settings, fields(ImportOptions)),
    ("feedback", "export"): (FeedbackSettings, feedback_settings, fields(ExportOptions)),
    ("feedback", "upgrade"): (FeedbackSettings, feedback_settings, frozenset()),
}
# Commands whose options are flags only (their help and docs promise no variables).
FLAGS_ONLY = {("train",), ("evaluate",), ("vader-data",), ("vader-model",), ("export",)}

# Values a generic rule can't make (a syntax of their own, a validator, a file that must exist).
EXAMPLES = {
    "models": "rm=/models/rm",
    "outputs": "POSITIVE:2",
    "normalize": "0.5,2",
    "template": "{prompt} | {completion}",
    "db": "sqlite:///elsewhere.db",
}
# Options valid only together: each is set with its companion, through the same channel.
COMPANIONS = {"ssl_certfile": "ssl_keyfile", "ssl_keyfile": "ssl_certfile"}


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator:
    """(command path, its parser) for every leaf command."""
    choices = [
        action.choices
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    if not choices:
        yield path, parser
        return
    for name, subparser in choices[0].items():
        yield from subcommands(subparser, (*path, name))


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions if not isinstance(action, argparse._HelpAction)]


def variable_table(settings: type) -> dict[str, Variable]:
    """dest -> its variable: a variable is named PREFIX + the option's destination."""
    prefix = settings.model_config["env_prefix"]
    return {
        variable.name.removeprefix(prefix).lower(): variable for variable in variables(settings)
    }


# reward-service's parsers read no variable when built (the settings do, when made), so one does.
PARSER = build_parser()


def command_parser(command: tuple[str, ...]) -> argparse.ArgumentParser:
    return dict(subcommands(PARSER))[command]


def settings_options() -> list[tuple[tuple[str, ...], str]]:
    """(command, dest) for every option of every command that is a setting."""
    found = []
    for command, (settings, _, inputs) in COMMANDS.items():
        table = variable_table(settings)
        found += [
            (command, action.dest)
            for action in options(command_parser(command))
            if action.dest in table and action.dest not in inputs
        ]
    return found


SETTINGS_OPTIONS = settings_options()


def option_id(case: tuple[tuple[str, ...], str]) -> str:
    return "-".join((*case[0], case[1]))


@pytest.fixture
def clean_environment(monkeypatch) -> None:
    """No REWARD_SERVICE_* / REWARD_FEEDBACK_* setting from the shell running the tests."""
    for name in list(os.environ):
        ours = name.startswith(("REWARD_SERVICE_", "REWARD_FEEDBACK_"))
        if ours and name not in ServeSettings.other_variables:
            monkeypatch.delenv(name)


@pytest.fixture
def tls_files(tmp_path) -> dict[str, str]:
    # FilePath needs files that exist; the settings never read them (the server does).
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("not read by the settings\n")
    return {"ssl_certfile": str(tmp_path / "cert.pem"), "ssl_keyfile": str(tmp_path / "key.pem")}


def action_of(command: tuple[str, ...], dest: str) -> argparse.Action:
    return next(action for action in options(command_parser(command)) if action.dest == dest)


def spelled(action: argparse.Action, token: str | bool) -> tuple[list[str], str]:
    """The command-line arguments and the variable's text for one value of an option."""
    if isinstance(action, argparse.BooleanOptionalAction):
        flag = action.option_strings[0 if token else 1]
        return [flag], "true" if token else "false"
    listed = action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction)
    arguments = [action.option_strings[0], token] if action.option_strings else [token]
    return arguments, json.dumps([token]) if listed else token


def example(action: argparse.Action, variable: Variable, extra: dict[str, str]) -> str | bool:
    """A valid value of the option other than its default."""
    if action.dest in {**EXAMPLES, **extra}:
        return {**EXAMPLES, **extra}[action.dest]
    default = variable.field.get_default(call_default_factory=True)
    if isinstance(action, argparse.BooleanOptionalAction):
        return not default
    if action.choices:
        return next(choice for choice in action.choices if choice != str(default))
    if action.type is int:
        return str((default or 6) + 1)
    if action.type is float:
        return str((default or 1.0) + 1.5)
    return "example"


def required_arguments(command: tuple[str, ...], skip: str) -> list[str]:
    """Placeholders for the command's required options (other than `skip`), to parse it."""
    arguments = []
    for action in options(command_parser(command)):
        required = action.required or (not action.option_strings and action.nargs is None)
        if required and action.dest != skip:
            value = "x" if action.type is not int else "3"
            arguments += [action.option_strings[0], value] if action.option_strings else [value]
    return arguments


def build(command: tuple[str, ...], arguments: list[str]) -> Any:
    _, settings_builder, _ = COMMANDS[command]
    return settings_builder(PARSER.parse_args([*command, *arguments]))


def test_every_option_of_a_command_that_reads_variables_has_one():
    every_command = {command for command, _ in subcommands(PARSER)}
    assert every_command == set(COMMANDS) | FLAGS_ONLY, "a new command: does it read variables?"
    for command, (settings, _, inputs) in COMMANDS.items():
        table = variable_table(settings)
        missing = [
            "/".join(action.option_strings) or action.dest
            for action in options(command_parser(command))
            if action.dest not in table and action.dest not in inputs
        ]
        assert not missing, f"{' '.join(command)}: options without a variable: {missing}"


def test_the_serve_variables_include_each_grouped_option_by_its_flags_name():
    names = {variable.name for variable in variables(ServeSettings)}
    assert {
        "REWARD_SERVICE_MAX_BATCH_SIZE",  # batching.max_batch_size, --max-batch-size
        "REWARD_SERVICE_BATCHING",  # the group as JSON, as before
        "REWARD_SERVICE_SCALE",  # mapping_overrides.scale, --scale
        "REWARD_SERVICE_OUTPUTS",  # --output, repeated: a JSON list
        "REWARD_SERVICE_NORMALIZE",  # --normalize MEAN,STD
        "REWARD_SERVICE_MAPPING_OVERRIDES",
    } <= names


@pytest.mark.parametrize("case", SETTINGS_OPTIONS, ids=option_id)
def test_each_option_set_by_its_variable_gives_the_settings_its_flag_gives(
    case, clean_environment, tls_files, monkeypatch
):
    command, dest = case
    settings, _, _ = COMMANDS[command]
    table = variable_table(settings)
    given = [dest, *([COMPANIONS[dest]] if dest in COMPANIONS else [])]
    flags, texts = [], {}
    for name in given:
        action = action_of(command, name)
        arguments, text = spelled(action, example(action, table[name], tls_files))
        flags += arguments
        texts[table[name].name] = text
    required = required_arguments(command, skip=dest)

    from_flags = build(command, [*required, *flags])
    for name, text in texts.items():
        monkeypatch.setenv(name, text)
    from_variables = build(command, required)
    for name in texts:
        monkeypatch.delenv(name)
    defaults = build(command, required)

    assert from_variables.model_dump() == from_flags.model_dump()  # dicts: pytest shows the diff
    assert from_variables != defaults, f"{texts} changed nothing"


def default_token(action: argparse.Action, variable: Variable) -> str | bool | None:
    """The option's default, as a flag gives it; None where a flag can't (no default, a list)."""
    default = variable.field.get_default(call_default_factory=True)
    if default is None or isinstance(default, list | dict):
        return None
    if isinstance(action, argparse.BooleanOptionalAction):
        return default
    return str(default)


def flag_at_default_options() -> list[tuple[tuple[str, ...], str]]:
    found = []
    for command, dest in SETTINGS_OPTIONS:
        table = variable_table(COMMANDS[command][0])
        if default_token(action_of(command, dest), table[dest]) is not None:
            found.append((command, dest))
    return found


@pytest.mark.parametrize("case", flag_at_default_options(), ids=option_id)
def test_a_flag_beats_its_variable_even_when_the_flag_gives_the_default(
    case, clean_environment, tls_files, monkeypatch
):
    command, dest = case
    table = variable_table(COMMANDS[command][0])
    action = action_of(command, dest)
    flags, _ = spelled(action, default_token(action, table[dest]))
    _, text = spelled(action, example(action, table[dest], tls_files))
    required = required_arguments(command, skip=dest)

    flag_alone = build(command, [*required, *flags])
    monkeypatch.setenv(table[dest].name, text)

    assert build(command, [*required, *flags]) == flag_alone


def test_a_grouped_options_variable_beats_the_groups_json_key_by_key(
    clean_environment, monkeypatch
):
    monkeypatch.setenv("REWARD_SERVICE_BATCHING", '{"max_batch_size": 16, "max_wait_ms": 5}')
    monkeypatch.setenv("REWARD_SERVICE_MAX_BATCH_SIZE", "64")
    monkeypatch.setenv("REWARD_SERVICE_MAPPING_OVERRIDES", '{"scale": -1, "shift": 2}')
    monkeypatch.setenv("REWARD_SERVICE_SCALE", "3")

    settings = build(("serve",), [])

    assert (settings.batching.max_batch_size, settings.batching.max_wait_ms) == (64, 5.0)
    assert settings.mapping_overrides == {"scale": 3.0, "shift": 2}


def test_a_flag_beats_its_variable_and_the_groups_other_variables_still_apply(
    clean_environment, monkeypatch
):
    monkeypatch.setenv("REWARD_SERVICE_MAX_BATCH_SIZE", "64")
    monkeypatch.setenv("REWARD_SERVICE_MAX_WAIT_MS", "5")
    monkeypatch.setenv("REWARD_SERVICE_SHIFT", "2")

    settings = build(("serve",), ["--max-batch-size", "8", "--scale", "-1"])

    assert (settings.batching.max_batch_size, settings.batching.max_wait_ms) == (8, 5.0)
    assert settings.mapping_overrides == {"scale": -1.0, "shift": 2.0}


@pytest.mark.parametrize(
    ("variable", "text", "reason"),
    [
        ("REWARD_SERVICE_PORT", "abc", "valid integer"),
        ("REWARD_SERVICE_MAX_BATCH_SIZE", "lots", "valid integer"),
        ("REWARD_SERVICE_MAX_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("REWARD_SERVICE_BATCHING", "{max", "not valid JSON"),
        ("REWARD_SERVICE_BATCHING", '{"max_wait_m": 5}', "'max_wait_m' is not one of its options"),
        ("REWARD_SERVICE_BATCHING", '{"max_batch_size": "x"}', "max_batch_size: Input should"),
        ("REWARD_SERVICE_ACTIVATION", "cube", "Input should be 'none'"),
        ("REWARD_SERVICE_TEMPLATE", "{prompt}", "must contain {completion}"),
        ("REWARD_SERVICE_OUTPUTS", "POSITIVE", "a JSON list of LABEL[:WEIGHT]"),
        ("REWARD_SERVICE_NORMALIZE", "3", "expected MEAN,STD"),
        ("REWARD_SERVICE_MODELS", "rm=/models/rm", "not valid JSON"),
        ("REWARD_SERVICE_MAPPING_OVERRIDES", '{"scale": "x"}', "scale: Input should be"),
        ("REWARD_SERVICE_MAPPING_OVERRIDES", '{"scael": 1}', "scael: Extra inputs"),
        ("REWARD_SERVICE_SSL_CERTFILE", "/no/such/cert.pem", "does not point to a file"),
        ("REWARD_SERVICE_LOG_LEVEL", "verbose", "Input should be 'debug'"),
        ("REWARD_FEEDBACK_PORT", "x", "valid integer"),
    ],
)
def test_a_variable_its_option_refuses_is_an_error_naming_the_variable_and_value(
    variable, text, reason, clean_environment, monkeypatch
):
    monkeypatch.setenv(variable, text)
    settings = FeedbackSettings if variable.startswith("REWARD_FEEDBACK_") else ServeSettings

    with pytest.raises(SettingsError) as refused:
        settings()

    assert f"{variable}={text!r}: " in str(refused.value)
    assert reason in str(refused.value)


def test_an_unknown_variable_with_the_prefix_is_an_error_naming_the_closest_option(
    clean_environment, monkeypatch
):
    monkeypatch.setenv("REWARD_SERVICE_MAX_BACH_SIZE", "64")
    monkeypatch.setenv("REWARD_FEEDBACK_ADMIN_KYE", "k")

    with pytest.raises(SettingsError) as refused:
        ServeSettings()
    assert str(refused.value) == (
        "REWARD_SERVICE_MAX_BACH_SIZE is not a setting (did you mean "
        "REWARD_SERVICE_MAX_BATCH_SIZE?)"
    )
    with pytest.raises(SettingsError, match="did you mean REWARD_FEEDBACK_ADMIN_KEY"):
        FeedbackSettings()


def test_kubernetes_service_links_are_refused_with_how_to_turn_them_off(
    clean_environment, monkeypatch
):
    # What a pod gets for a Service named reward-service, in its namespace.
    monkeypatch.setenv("REWARD_SERVICE_PORT", "tcp://10.0.0.7:8000")
    monkeypatch.setenv("REWARD_SERVICE_SERVICE_HOST", "10.0.0.7")

    with pytest.raises(SettingsError) as refused:
        ServeSettings()

    assert "REWARD_SERVICE_PORT='tcp://10.0.0.7:8000'" in str(refused.value)
    assert "enableServiceLinks: false" in str(refused.value)


def test_an_empty_api_key_variable_is_refused_and_a_secret_is_never_shown(
    clean_environment, monkeypatch
):
    # `docker run -e REWARD_SERVICE_API_KEY=$KEY` with KEY unset must not serve an empty key.
    monkeypatch.setenv("REWARD_SERVICE_API_KEY", "")

    with pytest.raises(SettingsError) as refused:
        ServeSettings()

    # The name alone, no `='...'`: a secret's value is never shown.
    assert str(refused.value) == (
        "REWARD_SERVICE_API_KEY: the API key is empty: give one, or leave the option out"
    )


def test_the_variables_other_parts_read_are_not_refused(clean_environment, monkeypatch, tmp_path):
    for name in ServeSettings.other_variables:
        monkeypatch.setenv(name, str(tmp_path) if name.endswith("CACHE") else "untrained")

    assert ServeSettings().cache_dir == tmp_path  # REWARD_SERVICE_CACHE: cache.default_cache_dir


def test_serve_given_a_refused_variable_exits_2_naming_it_before_loading_anything():
    env = {**os.environ, "REWARD_SERVICE_MAX_BATCH_SIZE": "lots"}
    result = subprocess.run(
        [sys.executable, "-m", "reward_service.cli", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=REPO_ROOT,
    )

    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "REWARD_SERVICE_MAX_BATCH_SIZE='lots': Input should be a valid integer, unable to parse "
        "string as an integer"
    )


def test_a_server_started_with_grouped_option_variables_applies_them(
    server_factory, tiny_model_factory, monkeypatch
):
    folder = tiny_model_factory("settings-env", labels=["NEGATIVE", "POSITIVE"])
    monkeypatch.setenv("REWARD_SERVICE_MAX_ITEMS_PER_REQUEST", "2")
    monkeypatch.setenv("REWARD_SERVICE_SCALE", "-2")
    monkeypatch.setenv("REWARD_SERVICE_OUTPUTS", '["POSITIVE"]')
    server = server_factory(["--model", f"m={folder}", "--grpc-port", "0"])

    listed = httpx.get(f"{server.url}/v1/models", timeout=HTTP_TIMEOUT_S).json()
    over = httpx.post(
        f"{server.url}/v1/score", json={"texts": ["a", "b", "c"]}, timeout=HTTP_TIMEOUT_S
    )
    within = httpx.post(
        f"{server.url}/v1/score", json={"texts": ["a", "b"]}, timeout=HTTP_TIMEOUT_S
    )

    mapping = listed["models"][0]["mapping"]
    assert mapping["scale"] == -2.0
    assert [output["label"] for output in mapping["outputs"]] == ["POSITIVE"]
    assert over.status_code == 413 and over.json()["error"]["type"] == "too_many_items"
    assert within.status_code == 200 and len(within.json()["rewards"]) == 2


# --- the policy trainer promises variables for a few flags only, named in their help ----------


def trainer_flags_with_variables() -> list[tuple[str, str, str]]:
    """(command, dest, variable) for each policy-trainer flag whose help says it defaults to a
    variable, `(default: $NAME`."""
    found = []
    for command, parser in subcommands(build_trainer_parser()):
        for action in options(parser):
            named = re.search(r"\(default: \$([A-Z_]+)", action.help or "")
            if named and (command[0], action.dest) not in RESOLVED_LATER:
                found.append((command[0], action.dest, named.group(1)))
    return found


# Resolved when the command runs rather than by the parser: prepare-default's --cache-dir goes
# through reward_service.cache.default_cache_dir (test_policy_models runs it with the variable).
RESOLVED_LATER = {("prepare-default", "cache_dir")}


@pytest.mark.parametrize("case", trainer_flags_with_variables(), ids="-".join)
def test_each_policy_trainer_flag_that_defaults_to_a_variable_reads_it(case, monkeypatch):
    command, dest, variable = case
    monkeypatch.setenv(variable, "/from/the/environment")

    parser = dict(subcommands(build_trainer_parser()))[(command,)]
    default = next(action.default for action in options(parser) if action.dest == dest)

    assert str(default) == "/from/the/environment"
