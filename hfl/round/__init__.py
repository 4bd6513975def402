"""One round of the protocol as a library (sans-I/O): proposing a block (``propose``), the leader's
round as a state machine (``leader``) and the ledger audit that re-runs every round (``audit``)."""
