"""Reward-model training from human rankings, and its evaluation.

- ``data``: reading rankings / pairs / labels / scores JSONL, format detection, line-numbered errors
- ``rules``: rankings -> binary labels and -> (chosen, rejected) pairs (pure)
- ``train``: fine-tuning (binary, pairwise, regression) and writing a servable folder
- ``evaluate``: pairwise accuracy, Pearson, Spearman, with the lexicon and human baselines
- ``vader``: the VADER movie-snippet data behind the default model, and its fixed split
- ``recipe``: the default model, built from that data
- ``cli``: the ``train``, ``evaluate`` and ``vader-data`` subcommands
"""
