"""Reward-model training from human rankings, and its evaluation.

- ``config``: the settings of ``train``, ``evaluate``, ``vader-data`` and ``vader-model``, which
  their flags mirror
- ``data``: reading rankings / pairs / labels / scores (JSONL, Parquet, TRL's formats), format
  detection, line-numbered errors
- ``rules``: rankings -> binary labels and -> (chosen, rejected) pairs (pure)
- ``train``: fine-tuning (binary, pairwise, regression) and writing a servable folder
- ``tracking``: once per epoch, the held-out figures, the best weights and early stopping
- ``evaluate``: pairwise accuracy, Pearson, Spearman, with the lexicon and human baselines
- ``model_card``: what a trained folder says about itself (README.md, its description)
- ``base_encoder``: the encoders ``--base`` names: MiniLM-L6 (default), mpnet (joined from its
  wheels), or a local folder
- ``vader``: the VADER movie-snippet data behind the default model, and its fixed split
- ``recipe``: the default model, built from that data (on any base: ``vader-model``)
- ``default_model``: that model (or an untrained placeholder), built once into the cache
- ``cli``: the ``train``, ``evaluate``, ``vader-data`` and ``vader-model`` subcommands
"""
