"""The methods: one package each, holding all of it, registered when imported.

``gpthf`` (sentence-compressing masks), ``gist`` (gist tokens), ``equal_info`` (Equal-Info
Windows). `megacompress.plugins.load_methods` imports this package; a method from outside the
package registers the same way (docs/architecture.md, "Adding a method").
"""

from megacompress.methods import equal_info, gist, gpthf  # noqa: F401  (registration)
