"""Test harness: a real Redis server, a fake Graph API, a Meta-like signer, subprocess helpers."""
