"""The versioned, content-addressed model store."""
