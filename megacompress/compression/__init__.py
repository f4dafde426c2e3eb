"""megacompress.compression"""
