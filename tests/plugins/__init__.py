"""Method packages defined outside ``megacompress`` (loaded with ``MEGACOMPRESS_PLUGINS=plugins.NAME``
and ``tests/`` on ``PYTHONPATH``; see tests/test_method_plugin.py). Never imported by the pytest
process itself: a plugin's tokenizer special would change the tokenizers of every later test."""
