"""One sub-package per op: reference, kernel(s), shape-keyed config, public function."""
