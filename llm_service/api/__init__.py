"""HTTP routers, one per wire format."""
