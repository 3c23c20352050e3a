"""The numpy encoder gives all-MiniLM-L6-v2's vectors: compared with sentence-transformers' own output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from symbi_context.minilm import MODEL_NAME, MiniLM

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM()


def test_matches_sentence_transformers(model: MiniLM) -> None:
    assert REFERENCE["model"] == MODEL_NAME
    assert model.dimension == 384
    assert model.max_tokens == REFERENCE["max_seq_length"] == 256
    texts = [item["text"] for item in REFERENCE["items"]]
    expected = np.array([item["vector"] for item in REFERENCE["items"]], dtype=np.float32)
    batched = model.encode(texts)  # padded to the longest: padding must not change a vector
    one_by_one = np.stack([model.encode([text])[0] for text in texts])
    for got in (batched, one_by_one):
        assert got.shape == expected.shape
        assert float(np.abs(got - expected).max()) < 1e-5
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_long_input_is_truncated_like_the_reference(model: MiniLM) -> None:
    long_text = next(item["text"] for item in REFERENCE["items"] if len(item["text"]) > 1000)
    assert model.token_count(long_text) == model.max_tokens
    assert model.encode([]).shape == (0, 384)


def test_similar_texts_are_closer_than_unrelated_ones(model: MiniLM) -> None:
    a, b, c = model.encode(["How do I reset my password?", "I forgot my password, how can I change it?",
                            "The stock market fell sharply today."])  # fmt: skip
    assert float(a @ b) > 0.6 > float(a @ c)


def test_loads_and_runs_with_no_network() -> None:
    """Offline: the hub is switched off and every proxy points at a closed port; the model still loads."""
    code = "from symbi_context.minilm import MiniLM; print(MiniLM().encode(['offline']).shape)"
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "ALL_PROXY": dead,
           "NO_PROXY": ""}  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 384)"
