"""GPTHF, the Generative Pretrained Thoughtformer (docs/gpthf.md): a GPT whose attention masks
compress every finished sentence into one embedding, so generation attends over sentences.

Importing the package registers the ``gpthf_encoder`` / ``gpthf_body`` mask kinds (``masks``),
the ``gpthf`` architecture and its presets (``model``) and the sentence-cache generator
(``generation``). Training data: ``data.kind=document`` on shards preprocessed with
``--split-sentences`` (the sentence sidecar gives the model its ``eos_mask``).
"""

from megacompress.methods.gpthf import generation, masks, model  # noqa: F401  (registration)
from megacompress.methods.gpthf.model import GPTHF, GPTHFConfig

__all__ = ["GPTHF", "GPTHFConfig"]
