"""megacompress.models"""
