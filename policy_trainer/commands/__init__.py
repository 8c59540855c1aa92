"""One module per `policy-trainer` subcommand (see policy_trainer.cli)."""
