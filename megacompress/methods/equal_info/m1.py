"""M1, the byte-level model of Equal-Info Windows, evaluated bit-reproducibly for coding.

M1 is a plain ``gpt`` model over the ``bytes`` tokenizer (ids 0..255 = bytes, 256 = eod),
trained with ``python -m megacompress.train --config configs/m1.yaml`` and exported with
``tools/convert_checkpoint.py export`` (``model.safetensors`` + ``config.json``).

Why not torch here. Encoder and decoder must quantize *bit-identical* probabilities, but
the encoder teacher-forces many bytes of many windows in one call while the decoder grows
each window one byte at a time, and BLAS/SDPA kernels change their reduction order with
the batch shape. ``M1.cdfs`` therefore runs the model with its own numba kernels in fp32
in which every output element is a sequential sum in a fixed order (no reassociation, no
FMA contraction, no BLAS) and every token reads only its own row's KV cache. The CDF of a
token is then a pure function of the bytes before it in its row: the same whatever the
other rows of the call, however many positions a call covers, and in any worker process.
Its values agree with the torch model to float rounding (tests check 1e-4).

Contexts: a row starts with the eod id as its first input (position 0) and the CDF at
position i is the distribution of the row's byte i (renormalised over the 256 byte ids,
then ``arithmetic.quantize_row``). KV cache layout: ``k, v [layers, rows, kv_heads,
context, head_dim]`` fp32; writing a row from position 0 again starts a new context.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from megacompress.errors import UserError
from megacompress.methods.equal_info.arithmetic import NUM_SYMBOLS, quantize_row
from megacompress.models.config import ConfigError, ModelConfig

BOS = 256  # the bytes tokenizer's eod id opens every M1 context


class M1Error(UserError, ValueError):
    """An M1 directory is unusable (missing files, not a byte model); names the path."""


def m1_hash(directory: str | Path) -> str:
    """sha256 over ``config.json`` and ``model.safetensors``: the identity of an M1."""
    d = Path(directory)
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = d / name
        if not path.is_file():
            raise M1Error(f"{path}: missing (expected a directory written by save_pretrained / export)")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor M1 reads from a gpt model's ``model.safetensors``."""
    h, f, d = config.hidden_size, config.ffn_hidden_size, config.head_dim
    shapes = {"embed.weight": (config.vocab_size, h), "norm.weight": (h,)}
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    layer = {"attn_norm": (h,), "attn.qkv": ((config.num_heads + 2 * config.num_kv_heads) * d, h),
             "attn.out": (h, config.num_heads * d), "mlp_norm": (h,), "mlp.gate": (f, h), "mlp.up": (f, h),
             "mlp.down": (h, f)}
    for i in range(config.num_layers):
        shapes.update({f"stack.layers.{i}.{name}.weight": shape for name, shape in layer.items()})
    return shapes


@dataclass
class M1Cache:
    """KV cache of ``rows`` contexts of up to ``context`` positions each (see module docstring)."""

    k: np.ndarray
    v: np.ndarray

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    @property
    def context(self) -> int:
        return self.k.shape[3]


class M1:
    """An exported byte model, ready for ``cdfs``; ``hash`` identifies it in shard metadata."""

    def __init__(self, directory: str | Path):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        self.directory = Path(directory)
        self.hash = m1_hash(directory)
        config_path, weights_path = self.directory / "config.json", self.directory / "model.safetensors"
        try:
            config = ModelConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, ConfigError, TypeError, AttributeError) as exc:
            raise M1Error(f"{config_path}: not a model config ({exc})") from None
        if config.architecture != "gpt" or config.vocab_size < NUM_SYMBOLS + 1:
            raise M1Error(f"{self.directory}: M1 must be a gpt model over the bytes tokenizer "
                          f"(architecture {config.architecture!r}, vocab_size {config.vocab_size})")
        self.config = config
        try:
            w = load_file(str(weights_path))
        except SafetensorError as exc:
            raise M1Error(f"{weights_path}: not a readable safetensors file ({exc})") from None
        # The numba kernels index by the config's sizes without bounds checks: shapes first.
        wrong = [f"{name} {w[name].shape if name in w else 'missing'}, the config needs {shape}"
                 for name, shape in _weight_shapes(config).items() if name not in w or w[name].shape != shape]
        if wrong:
            raise M1Error(f"{weights_path}: does not match {config_path}: " + "; ".join(wrong[:4]))
        layers = [f"stack.layers.{i}" for i in range(config.num_layers)]

        def stack(name, transpose=True):
            arrays = [w[f"{p}.{name}.weight"] for p in layers]
            return np.ascontiguousarray(np.stack([a.T if transpose else a for a in arrays]), dtype=np.float32)

        self._weights = (
            np.ascontiguousarray(w["embed.weight"], dtype=np.float32),
            stack("attn_norm", False), stack("attn.qkv"), stack("attn.out"),
            stack("mlp_norm", False), stack("mlp.gate"), stack("mlp.up"), stack("mlp.down"),
            np.ascontiguousarray(w["norm.weight"], dtype=np.float32),
            # Only the byte rows of the (tied or untied) head: M1 codes bytes.
            np.ascontiguousarray(w["embed.weight" if config.tie_embeddings else "lm_head.weight"][:NUM_SYMBOLS].T,
                                 dtype=np.float32),
        )
        d = config.head_dim
        inv_freq = (config.rope_theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)).astype(np.float32)
        angles = np.arange(config.max_seq_len, dtype=np.float32)[:, None] * inv_freq[None, :]
        self._cos, self._sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
        self._dims = (config.num_heads, config.num_kv_heads, d, float(config.norm_eps),
                      np.float32(1.0 / math.sqrt(d)))

    @property
    def max_context(self) -> int:
        return self.config.max_seq_len

    def new_cache(self, rows: int, context: int) -> M1Cache:
        if context > self.max_context:
            raise M1Error(f"{self.directory}: context {context} exceeds M1's max_seq_len {self.max_context}")
        c = self.config
        shape = (c.num_layers, rows, c.num_kv_heads, context, c.head_dim)
        return M1Cache(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def cdfs(self, cache: M1Cache, rows: np.ndarray, positions: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Quantized next-byte CDFs int32 [N, 257] after input ``tokens[n]`` at ``positions[n]`` of
        cache row ``rows[n]`` (its K/V are stored there). Positions of one row must be increasing
        and follow the positions already stored; position 0 takes ``BOS``."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        if len(positions) and positions.max() >= cache.context:
            raise M1Error(f"position {positions.max()} is outside the cache context {cache.context}")
        heads, kv_heads, d, eps, scale = self._dims
        return _forward_cdfs(*self._weights, self._cos, self._sin, heads, kv_heads, d, eps, scale,
                             cache.k, cache.v, rows, positions, tokens)

    def probabilities(self, cache: M1Cache, rows, positions, tokens) -> np.ndarray:
        """Float next-byte probabilities [N, 256] (the values ``cdfs`` quantizes; for tests)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        heads, kv_heads, d, eps, scale = self._dims
        return _forward_probs(*self._weights, self._cos, self._sin, heads, kv_heads, d, eps, scale, cache.k,
                              cache.v, rows, np.ascontiguousarray(positions, dtype=np.int64),
                              np.ascontiguousarray(tokens, dtype=np.int64))


@njit(cache=True)
def _matmul(x, w, out):
    # out[n, j] = sum_k x[n, k] w[k, j], summed in k order for every element; vectorised
    # across j only, so an element's value never depends on N or on the other rows.
    n, kdim = x.shape
    jdim = w.shape[1]
    block = 8
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        for i in range(i0, i1):
            for j in range(jdim):
                out[i, j] = np.float32(0.0)
        for k in range(kdim):
            wk = w[k]
            for i in range(i0, i1):
                xv = x[i, k]
                oi = out[i]
                for j in range(jdim):
                    oi[j] += xv * wk[j]


@njit(cache=True)
def _rmsnorm(x, weight, eps, out):
    n, h = x.shape
    for i in range(n):
        acc = np.float32(0.0)
        for j in range(h):
            acc += x[i, j] * x[i, j]
        inv = np.float32(1.0) / np.sqrt(acc / np.float32(h) + np.float32(eps))
        for j in range(h):
            out[i, j] = (x[i, j] * inv) * weight[j]


@njit(cache=True)
def _rotate(vec, cos, sin):
    half = vec.shape[0] // 2
    for i in range(half):
        a, b = vec[i], vec[i + half]
        vec[i] = a * cos[i] - b * sin[i]
        vec[i + half] = b * cos[i] + a * sin[i]


@njit(cache=True)
def _forward_hidden(embed, attn_norm, qkv_w, out_w, mlp_norm, gate_w, up_w, down_w, norm_w, head_t, cos, sin,
                    heads, kv_heads, d, eps, scale, kc, vc, rows, positions, tokens):
    n = tokens.shape[0]
    hidden = embed.shape[1]
    layers = attn_norm.shape[0]
    per_kv = heads // kv_heads
    group = (per_kv + 2) * d
    x = np.empty((n, hidden), np.float32)
    for i in range(n):
        x[i] = embed[tokens[i]]
    h = np.empty((n, hidden), np.float32)
    qkv = np.empty((n, qkv_w.shape[2]), np.float32)
    att = np.zeros((n, heads * d), np.float32)
    proj = np.empty((n, hidden), np.float32)
    ffn = gate_w.shape[2]
    g = np.empty((n, ffn), np.float32)
    u = np.empty((n, ffn), np.float32)
    scores = np.empty(kc.shape[3], np.float32)
    for layer in range(layers):
        _rmsnorm(x, attn_norm[layer], eps, h)
        _matmul(h, qkv_w[layer], qkv)
        # All K/V of this call first: a token may attend to earlier tokens of the same call.
        for i in range(n):
            r, p = rows[i], positions[i]
            for kv in range(kv_heads):
                base = kv * group
                for hq in range(per_kv):
                    _rotate(qkv[i, base + hq * d: base + (hq + 1) * d], cos[p], sin[p])
                key = qkv[i, base + per_kv * d: base + (per_kv + 1) * d]
                _rotate(key, cos[p], sin[p])
                kc[layer, r, kv, p] = key
                vc[layer, r, kv, p] = qkv[i, base + (per_kv + 1) * d: base + (per_kv + 2) * d]
        for i in range(n):
            r, p = rows[i], positions[i]
            for kv in range(kv_heads):
                for hq in range(per_kv):
                    q = qkv[i, kv * group + hq * d: kv * group + (hq + 1) * d]
                    best = np.float32(-np.inf)
                    for j in range(p + 1):
                        s = np.float32(0.0)
                        kj = kc[layer, r, kv, j]
                        for e in range(d):
                            s += q[e] * kj[e]
                        s = s * scale
                        scores[j] = s
                        if s > best:
                            best = s
                    total = np.float32(0.0)
                    for j in range(p + 1):
                        scores[j] = np.exp(scores[j] - best)
                        total += scores[j]
                    o = att[i, (kv * per_kv + hq) * d: (kv * per_kv + hq + 1) * d]
                    for e in range(d):
                        o[e] = np.float32(0.0)
                    for j in range(p + 1):
                        wj = scores[j] / total
                        vj = vc[layer, r, kv, j]
                        for e in range(d):
                            o[e] += wj * vj[e]
        _matmul(att, out_w[layer], proj)
        for i in range(n):
            for j in range(hidden):
                x[i, j] = x[i, j] + proj[i, j]
        _rmsnorm(x, mlp_norm[layer], eps, h)
        _matmul(h, gate_w[layer], g)
        _matmul(h, up_w[layer], u)
        for i in range(n):
            for j in range(ffn):
                gv = g[i, j]
                g[i, j] = gv / (np.float32(1.0) + np.exp(-gv)) * u[i, j]
        _matmul(g, down_w[layer], proj)
        for i in range(n):
            for j in range(hidden):
                x[i, j] = x[i, j] + proj[i, j]
    _rmsnorm(x, norm_w, eps, h)
    logits = np.empty((n, head_t.shape[1]), np.float32)
    _matmul(h, head_t, logits)
    return logits


@njit(cache=True)
def _softmax_rows(logits):
    n, v = logits.shape
    out = np.empty((n, v), np.float32)
    for i in range(n):
        best = logits[i, 0]
        for j in range(1, v):
            if logits[i, j] > best:
                best = logits[i, j]
        total = np.float32(0.0)
        for j in range(v):
            out[i, j] = np.exp(logits[i, j] - best)
            total += out[i, j]
        for j in range(v):
            out[i, j] = out[i, j] / total
    return out


@njit(cache=True)
def _forward_probs(embed, attn_norm, qkv_w, out_w, mlp_norm, gate_w, up_w, down_w, norm_w, head_t, cos, sin,
                   heads, kv_heads, d, eps, scale, kc, vc, rows, positions, tokens):
    logits = _forward_hidden(embed, attn_norm, qkv_w, out_w, mlp_norm, gate_w, up_w, down_w, norm_w, head_t,
                             cos, sin, heads, kv_heads, d, eps, scale, kc, vc, rows, positions, tokens)
    return _softmax_rows(logits)


@njit(cache=True)
def _forward_cdfs(embed, attn_norm, qkv_w, out_w, mlp_norm, gate_w, up_w, down_w, norm_w, head_t, cos, sin,
                  heads, kv_heads, d, eps, scale, kc, vc, rows, positions, tokens):
    probs = _forward_probs(embed, attn_norm, qkv_w, out_w, mlp_norm, gate_w, up_w, down_w, norm_w, head_t,
                           cos, sin, heads, kv_heads, d, eps, scale, kc, vc, rows, positions, tokens)
    cdf = np.empty((probs.shape[0], NUM_SYMBOLS + 1), np.int32)
    for i in range(probs.shape[0]):
        quantize_row(probs[i], cdf[i])
    return cdf
