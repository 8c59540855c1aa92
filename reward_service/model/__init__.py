"""What a model is: its spec, the reward mapping, input shaping, tokenization, loading, backends."""
