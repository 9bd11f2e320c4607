"""Tokenizers for the task tests: the real SmolLM2 one (cached export) and two tiny in-memory ones."""

import pytest
from tiny_tokenizers import bpe, wordlevel


@pytest.fixture(scope="session")
def wordlevel_tokenizer():
    return wordlevel()


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return bpe()


@pytest.fixture(scope="session")
def smollm_tokenizer():
    from transformers import AutoTokenizer

    from surgery.errors import ModelNotFoundError
    from surgery.loading import _embedded_cache
    try:
        path = _embedded_cache("smollm2-135m")  # the cached export; made on first use (~30 s)
    except ModelNotFoundError as error:
        pytest.skip(f"embedded SmolLM2 unavailable: {error}")
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="session", params=["smollm2", "wordlevel", "bpe"])
def any_tokenizer(request):
    return request.getfixturevalue({"smollm2": "smollm_tokenizer", "wordlevel": "wordlevel_tokenizer",
                                    "bpe": "bpe_tokenizer"}[request.param])
