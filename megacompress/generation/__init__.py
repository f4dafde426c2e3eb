"""megacompress.generation"""
