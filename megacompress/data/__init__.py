"""megacompress.data"""
