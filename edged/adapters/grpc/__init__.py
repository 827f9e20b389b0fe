"""The gRPC boundary: servicers convert and delegate; the core knows nothing of protobuf."""
