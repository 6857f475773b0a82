"""Key files: the data key wrapped by passphrase-free master keys, rotation, write-only
recipients."""
