"""Gist tokens (docs/gist.md): an instruction is compressed into k learned ``<GIST>`` tokens
whose cached keys/values replace the prompt at inference.

Importing the package registers the ``<GIST>`` special token, the gist mask kinds
(``masks``), the ``gist`` architecture (``model``), the ``instruction`` dataset kind
(``data``) and the ``megacompress gist`` subcommand (``cli``). Modules: ``init`` (a gist model
from a base model), ``cache`` (cached gist K/V), ``generate`` (generation from cached
gists), ``evaluate`` (ROUGE-L and efficiency).
"""

from megacompress.command import register_command
from megacompress.data.tokenizers import register_special

GIST_TEXT = "<GIST>"
register_special("gist", GIST_TEXT)

from megacompress.methods.gist import data, masks, model  # noqa: E402,F401  (registration)
from megacompress.methods.gist.model import GistConfig, GistGPT  # noqa: E402

register_command("gist", "Gist tokens: init a gist model, prepare instruction data, compress instructions to "
                         "cached gists, generate, evaluate.", "megacompress.methods.gist.cli:main")

__all__ = ["GIST_TEXT", "GistConfig", "GistGPT"]
