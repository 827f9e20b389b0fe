"""Generated gRPC stubs (``make stubs``); never edited by hand."""
