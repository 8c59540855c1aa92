"""The ranking web app: people rank a policy's completions, and the rankings train the reward model.

- ``db``: the tables (SQLAlchemy models), ``connect`` and ``upgrade`` (Alembic, ``migrations/``)
- ``store``: the only module that reads and writes the database; validation; typed errors
- ``agreement``: agreement between raters, with the consensus and with the model (pure)
- ``quality``: a campaign's quality report (the admin page's figures), from the store
- ``export``: a campaign's judgements as rankings / pairs JSONL or a ``datasets`` folder
- ``label_studio``: a Label Studio ranking export read into items and judgements
- ``samples``: the items to rank: ``policy-trainer sample``'s file, or a PPO run's samples.jsonl
- ``app``: the FastAPI app: pages, static files and the JSON API the pages call
- ``settings``: ``FeedbackSettings``, every ``feedback serve`` option
- ``cli``: the ``reward-service feedback`` subcommands
"""
