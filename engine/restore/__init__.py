"""Reading a backup out of the repository: plan, fetch, write; export as an archive."""
