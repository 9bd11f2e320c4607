"""Alternative ablation backends: the same masks, run through a TransformerLens TransformerBridge or
an nnsight model. Neither library is imported until a function that needs it is called."""

from surgery.backends.nnsight_backend import nnsight_from_hf, nnsight_masked_logits
from surgery.backends.transformer_lens_bridge import bridge_from_hf, bridge_masked_logits

__all__ = ["bridge_from_hf", "bridge_masked_logits", "nnsight_from_hf", "nnsight_masked_logits"]
