"""Which variants are resident, which one serves, and the leases that keep them alive."""
