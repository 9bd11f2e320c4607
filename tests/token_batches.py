"""A random TokenBatch for tiny models, importable by name from any test directory (`conftest` is
not: tests/tasks has a conftest of its own, and whichever pytest imported last owns that name)."""

import torch


def token_batch(loaded, batch=3, seq=10, seed=0, positions=2, pad_last=True):
    """Random tokens, right-padded on the last row, scored at a few real positions."""
    import surgery
    vocab = loaded.model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    am = torch.ones_like(ids)
    if pad_last and batch > 1:
        am[-1, seq - 3:] = 0
        ids[-1, seq - 3:] = 0
    pos = torch.stack([torch.randperm(int(am[b].sum()), generator=g)[:positions] for b in range(batch)])
    tgt = torch.randint(3, vocab, pos.shape, generator=g)
    return surgery.TokenBatch(ids, am, pos, tgt)
