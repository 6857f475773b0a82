"""Keeping a repository healthy: verify, prune (and repack), replicate, repair."""
