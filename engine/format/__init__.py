"""What is on a target, byte for byte: the spec, encryption, packs, manifests and trees."""
