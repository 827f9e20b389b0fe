"""What runs on the node: receiving pushed updates and applying them into the store."""
