"""`hfl console`: a browser view of a running federation (issue 16)."""
