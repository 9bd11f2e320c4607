"""Two tiny in-memory tokenizers that know every word the built-in tasks use (no download).

For tests and benchmarks that need a tokenizer without a model hub (tests/tiny_tokenizers.py
re-exports them for the tests)."""

from probes.tasks import agreement, factual, greater_than, ioi


def corpus() -> list[str]:
    """Every text the built-in prompt tasks can produce, so tiny tokenizers know all their words."""
    lines = [p + " " + a for p, a in factual.facts()]
    lines += [p + " " + io + " " + s for p, io, s in ioi.examples(400, 0)]
    lines += [p + " " + r + " " + w for p, r, w in agreement.examples(400, 0)]
    lines += [f"{p} {r} {w}" for v in agreement.VERBS for p, r, w in [("The dog", *v)]]
    lines += [" ".join(ioi.NAMES), " ".join(w for pair in agreement.NOUNS + agreement.ATTRACTORS for w in pair)]
    lines += [greater_than.prompt_template(n, c, y) + f"{y:02d}" for n in greater_than.NOUNS for c in (11, 14, 17)
              for y in range(0, 100, 7)]
    lines += ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
              "seventeen eighteen nineteen twenty apple banana cherry melon grape lemon orange peach"]
    return lines


def wordlevel():
    """WordLevel (whole words, single digits) with BERT-like [CLS] ... [SEP] specials, wrapped for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    words = sorted({w for line in corpus() for w, _ in pre.pre_tokenize_str(line)})
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", name_or_path="tiny-wordlevel")


def bpe():
    """Byte-level BPE with single-digit splitting (SmolLM2/Llama-3 style), trained in memory; a raw tokenizers object."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, min_frequency=1, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus() * 2, trainer)
    return tok


def bpe_fast(pad: str = "<|endoftext|>"):
    """The byte-level BPE wrapped as a transformers tokenizer (it can encode any text), for saved tiny models."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=bpe(), eos_token=pad, pad_token=pad, name_or_path="tiny-bpe")
