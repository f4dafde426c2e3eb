"""The M2 sizes of the Equal-Info Windows paper as model presets: ``eiw-m2-25m`` ... ``eiw-m2-2b``.

The paper (docs/equal_info.md, "Published results") names its four M2s by parameter count,
25M / 113M / 403M / 2B, and counts FLOPs per byte from *non-embedding* parameters, so these
are non-embedding counts: they do not change with the tokenizer's vocabulary (bytes, SentencePiece,
65k window tokens), which the paper's equal-size comparison needs. The shapes themselves are
not in SPEC; ours are the project's block (SwiGLU, RoPE, RMSNorm) with head dim 64, an MLP of
~8/3 the width (a multiple of 128, so every TP size up to 8 splits it) and the depth that gives
the count: 25.7 M, 113.2 M, 398.2 M, 2,004 M. The 25M shape is the one benchmarks/equal_info_m2.py
already times. Vocabulary: 65,536 window tokens of EqualInfoAC[b16, v65k] + eod / eos / gist;
context: 2,048 tokens, a 10,240-byte example (the paper's) at the delay rule's 4.40 bytes/token
is ~2,330 tokens.
"""

from megacompress.models.config import register_preset

WINDOW_TOKENS_WITH_SPECIALS = 65_539
_BASE = dict(vocab_size=WINDOW_TOKENS_WITH_SPECIALS, max_seq_len=2048)
SIZES = {
    "eiw-m2-25m": dict(_BASE, hidden_size=512, num_layers=8, num_heads=8, ffn_hidden_size=1408),
    "eiw-m2-113m": dict(_BASE, hidden_size=768, num_layers=16, num_heads=12, ffn_hidden_size=2048),
    "eiw-m2-403m": dict(_BASE, hidden_size=1024, num_layers=31, num_heads=16, ffn_hidden_size=2816),
    "eiw-m2-2b": dict(_BASE, hidden_size=2048, num_layers=39, num_heads=32, ffn_hidden_size=5632),
}
for _name, _fields in SIZES.items():
    register_preset(_name, _fields)
