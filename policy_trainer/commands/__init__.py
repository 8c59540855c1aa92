"""One module per `policy-trainer` subcommand (see policy_trainer.cli), and `reward_flags`,
the reward-service flags two of them share."""
