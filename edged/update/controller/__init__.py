"""What runs on the controller: building signed updates and pushing them to nodes."""
