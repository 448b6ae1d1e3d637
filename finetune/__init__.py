"""SFT and preference optimization with PASTA attention masks."""
