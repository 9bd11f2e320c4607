"""A reward for `surgery values scar --reward scar_test_rewards:fruit_count` (module:function form)."""


def fruit_count(prompts, responses):
    """How many fruit words each response names: a reward that segments can earn."""
    return [float(sum(r.count(w) for w in ("apple", "pear", "plum"))) for r in responses]
