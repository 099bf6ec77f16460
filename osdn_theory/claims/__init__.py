"""Claims registry (C1–C8): each claim is a function returning a :class:`ClaimResult`."""
