"""megacompress.attention"""
