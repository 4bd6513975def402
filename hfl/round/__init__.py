"""The round protocol as a library (sans-I/O): what the authority schedules for a round
(:mod:`hfl.round.schedule`) and how a validator decides on a proposed block (:mod:`hfl.round.verdict`).
The services only gather the inputs, sign and send."""
