"""megacompress.parallel"""
