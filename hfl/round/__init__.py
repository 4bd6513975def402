"""One round of the protocol as a library (sans-I/O): what the authority schedules for a round
(``schedule``), what a fog reports for a bucket (``bucket``), proposing a block (``propose``), the leader's
round as a state machine (``leader``), how a validator decides on a proposed block (``verdict``), what the
leader's round report means for the authority (``report``) and the ledger audit that re-runs every round
(``audit``). The services only gather the inputs, sign and send."""
