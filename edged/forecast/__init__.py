"""When will each model be needed next: request history and the forecasters built on it."""
