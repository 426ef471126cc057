"""Live delivery plumbing: wake-ups for open streams (pure asyncio, no database)."""
