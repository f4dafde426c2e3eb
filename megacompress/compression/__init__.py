"""Kept for older command lines: ``python -m megacompress.compression.evaluate``, ``.compress``
and ``.decompress`` run ``megacompress equal-info evaluate|compress|decompress``
(the code lives in `megacompress.methods.equal_info`)."""
