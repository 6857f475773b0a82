"""Reading a source into the repository: walk, cut, seal, pack, upload, tree, manifest."""
