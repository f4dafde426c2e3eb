"""megacompress.training"""
