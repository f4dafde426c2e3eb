"""megacompress.attention: mask functions (``masks``) and backends (``sdpa``, ``flex``, ``flash``).

The model uses only :mod:`megacompress.attention.dispatch`::

    from megacompress.attention import AttentionMask, prepare, attend
"""

from megacompress.attention.dispatch import AttentionMask, PreparedMask, attend, prepare

__all__ = ["AttentionMask", "PreparedMask", "attend", "prepare"]
